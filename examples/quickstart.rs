//! Quickstart: the empirical NTK of a 3-hidden-layer MLP on 64 points of a circle.
//!
//! Prints each layer's share of the kernel's trace (weights and bias separately), the
//! kernel's eigenvalue range, and how much of a smooth target lies in the kernel's top
//! eigendirections (the ones gradient descent fits first).
//!
//! Run with `cargo run --release --example quickstart`.

use std::error::Error;
use std::f64::consts::PI;

use ntk::nalgebra::{DMatrix, DVector, SymmetricEigen};
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{Activation, Mlp, MlpSpec, NtkModel, empirical_ntk};

fn main() -> Result<(), Box<dyn Error>> {
    // 64 points on the unit circle and a smooth target on them.
    let n = 64;
    let angle = |i: usize| 2.0 * PI * i as f64 / n as f64;
    let x = DMatrix::from_fn(n, 2, |i, j| {
        if j == 0 {
            angle(i).cos()
        } else {
            angle(i).sin()
        }
    });
    let y = DVector::from_fn(n, |i, _| (3.0 * angle(i)).sin() + 0.5 * angle(i).cos());

    // Three hidden layers of width 512, NTK parameterization, with biases.
    let spec = MlpSpec::new(2)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Erf)
        .hidden(512, Activation::Relu)
        .weight_std(1.4)
        .bias_std(0.1);
    let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(0))?;

    let theta = empirical_ntk(&net, &x, &x)?;
    let parts = net.group_kernels(&x, &x)?;
    let trace = theta.trace();

    println!(
        "Empirical NTK of an MLP {:?} ({} parameters) on {n} points of a circle\n",
        spec.widths(),
        net.parameter_count()
    );
    println!("Share of tr Θ = {trace:.4} by layer:\n");
    println!(
        "{:>5}  {:>12}  {:>10}  {:>9}  {:>9}  {:>9}",
        "layer", "shape", "activation", "weights", "bias", "total"
    );
    let widths = spec.widths();
    let pct = |m: &DMatrix<f64>| 100.0 * m.trace() / trace;
    let mut sum = 0.0;
    for (l, part) in parts.iter().enumerate() {
        let activation = spec
            .hidden_layers()
            .get(l)
            .map_or_else(|| "linear".to_string(), |(_, a)| a.to_string());
        let bias = part.bias.as_ref().map_or(0.0, pct);
        let total = pct(&part.total());
        sum += total;
        println!(
            "{:>5}  {:>12}  {:>10}  {:>8.2}%  {:>8.2}%  {:>8.2}%",
            l + 1,
            format!("{} → {}", widths[l], widths[l + 1]),
            activation,
            pct(&part.weights),
            bias,
            total
        );
    }
    println!(
        "{:>5}  {:>12}  {:>10}  {:>9}  {:>9}  {:>8.2}%\n",
        "sum", "", "", "", "", sum
    );

    // Eigenvalues of the (symmetric, PSD) kernel.
    let eigen = SymmetricEigen::try_new(theta, f64::EPSILON, 0)
        .ok_or("the eigendecomposition of Θ did not converge")?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let (max, min) = (eigen.eigenvalues[order[0]], eigen.eigenvalues[order[n - 1]]);
    println!(
        "Eigenvalues of Θ: λ_max = {max:.4}, λ_min = {min:.4e}, condition number λ_max/λ_min = {:.1}",
        max / min
    );

    // Gradient flow fits the residual along eigenvector v_i at rate λ_i: a smooth
    // target lives mostly in the top eigendirections.
    let y_norm2 = y.norm_squared();
    let mut captured = 0.0;
    print!("Share of the target's ‖y‖² in the top eigendirections:");
    for (rank, &i) in order.iter().enumerate().take(8) {
        captured += eigen.eigenvectors.column(i).dot(&y).powi(2);
        if [0, 1, 3, 7].contains(&rank) {
            print!("  top {}: {:.1}%", rank + 1, 100.0 * captured / y_norm2);
        }
    }
    println!();
    Ok(())
}
