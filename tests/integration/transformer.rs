//! Tensor Programs II's one-layer Transformer as a program (1/n softmax attention with
//! tied queries, keys and values; LayerNorm without affine parameters): its finite
//! network against finite differences, its limit against two independent
//! implementations (`tests/data/transformer.json`) and against the paper's matrix
//! formulas written out here, and the n^{−1/2} convergence between them.

use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{Activation, NtkModel, Program, empirical_ntk, infinite_width, width_convergence};
use serde_json::Value;

use crate::common::{self, rel_err};
use crate::prec;

/// k_t = dense(U, x_t); y = attention(k, k, k); z_t = LN(y_t + k_t);
/// o_t = LN(dense(W₂, φ(dense(W₁, z_t))) + z_t); f = readout(mean_t o_t) (`ntk::zoo::Transformer`).
pub fn transformer(
    tokens: usize,
    token_dim: usize,
    activation: Activation,
    (sigma_u, sigma_w, sigma_v): (f64, f64, f64),
) -> Program {
    ntk::zoo::Transformer::new(tokens, token_dim)
        .activation(activation)
        .input_std(sigma_u)
        .weight_std(sigma_w)
        .readout_std(sigma_v)
        .program()
        .unwrap()
}

/// The reference case of `tests/data/transformer.json` (see tests/data/README.md).
#[test]
fn one_layer_transformer_matches_two_independent_implementations() {
    let data: Value =
        serde_json::from_str(include_str!("../data/transformer.json")).expect("parses");
    let c = &data["cases"][0];
    let a = &c["architecture"];
    let p = transformer(
        a["tokens"].as_u64().unwrap() as usize,
        a["token_dim"].as_u64().unwrap() as usize,
        Activation::Erf,
        (
            a["input_std"].as_f64().unwrap(),
            a["weight_std"].as_f64().unwrap(),
            a["readout_std"].as_f64().unwrap(),
        ),
    );
    common::assert_matches_reference(&p, c, prec::NEURAL_TANGENTS);
}

/// E relu(u) relu(v) and E relu'(u) relu'(v) for (u, v) ~ N(0, [[a, c], [c, b]]).
fn relu_dual(a: f64, c: f64, b: f64) -> (f64, f64) {
    let s = (a * b).sqrt();
    let rho = (c / s).clamp(-1.0, 1.0);
    let theta = rho.acos();
    let pi = std::f64::consts::PI;
    (
        s * ((1.0 - rho * rho).sqrt() + (pi - theta) * rho) / (2.0 * pi),
        (pi - theta) / (2.0 * pi),
    )
}

/// Tensor Programs II's matrix formulas for the one-layer ReLU Transformer with all
/// σ = 1, written out per pair of sequences (T × T matrices over tokens): with
/// C^k = X X̄ᵀ/d and A = softmax(C^k(x, x)) row-wise, C^y = (A + I) C^k (Ā + I)ᵀ,
/// LayerNorm divides by √diag, and the tangent matrices T follow the same products
/// (T^k = C^k for U's own derivative, T^g = C^z + T^z, T^φ = Ċ ⊙ T^g, …).
fn matrix_formulas(x: &[f64], xb: &[f64], tokens: usize, d: usize) -> (f64, f64) {
    let tok = |v: &[f64], t: usize| v[t * d..(t + 1) * d].to_vec();
    let gram = |a: &[f64], b: &[f64]| {
        DMatrix::from_fn(tokens, tokens, |t, s| {
            tok(a, t)
                .iter()
                .zip(tok(b, s))
                .map(|(p, q)| p * q)
                .sum::<f64>()
                / d as f64
        })
    };
    let attention = |v: &[f64]| {
        let logits = gram(v, v);
        let mut a = DMatrix::zeros(tokens, tokens);
        for t in 0..tokens {
            let max = logits.row(t).max();
            let e: Vec<f64> = (0..tokens).map(|s| (logits[(t, s)] - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for s in 0..tokens {
                a[(t, s)] = e[s] / total;
            }
        }
        a + DMatrix::identity(tokens, tokens)
    };
    let (a, ab) = (attention(x), attention(xb));
    // Per-sample second moments (x with x, x̄ with x̄) and the cross ones.
    let ck = [gram(x, x), gram(xb, xb), gram(x, xb)];
    let cy = [
        &a * &ck[0] * a.transpose(),
        &ab * &ck[1] * ab.transpose(),
        &a * &ck[2] * ab.transpose(),
    ];
    let ty = cy[2].clone();
    let norm = |m: &DMatrix<f64>, s1: &[f64], s2: &[f64]| {
        DMatrix::from_fn(tokens, tokens, |t, s| m[(t, s)] / (s1[t] * s2[s]))
    };
    let sd = |c: &DMatrix<f64>| (0..tokens).map(|t| c[(t, t)].sqrt()).collect::<Vec<_>>();
    let (sy, syb) = (sd(&cy[0]), sd(&cy[1]));
    let cz = [
        norm(&cy[0], &sy, &sy),
        norm(&cy[1], &syb, &syb),
        norm(&cy[2], &sy, &syb),
    ];
    let tz = norm(&ty, &sy, &syb);
    // g = W₁ z, φ(g), h = W₂ φ(g), u = h + z.
    let dual = |i: usize| {
        let (pa, pb) = match i {
            0 => (&cz[0], &cz[0]),
            1 => (&cz[1], &cz[1]),
            _ => (&cz[0], &cz[1]),
        };
        let mut c = DMatrix::zeros(tokens, tokens);
        let mut cd = DMatrix::zeros(tokens, tokens);
        for t in 0..tokens {
            for s in 0..tokens {
                let (m, dd) = relu_dual(pa[(t, t)], cz[i][(t, s)], pb[(s, s)]);
                c[(t, s)] = m;
                cd[(t, s)] = dd;
            }
        }
        (c, cd)
    };
    let (c0, _) = dual(0);
    let (c1, _) = dual(1);
    let (c2, cd2) = dual(2);
    let cu = [&c0 + &cz[0], &c1 + &cz[1], &c2 + &cz[2]];
    let tg = &cz[2] + &tz;
    let tphi = cd2.component_mul(&tg);
    let th = &c2 + tphi;
    let tu = th + tz;
    let (su, sub) = (sd(&cu[0]), sd(&cu[1]));
    let co = norm(&cu[2], &su, &sub);
    let to = norm(&tu, &su, &sub);
    let mean = |m: &DMatrix<f64>| m.sum() / (tokens * tokens) as f64;
    (mean(&co), mean(&co) + mean(&to))
}

#[test]
fn relu_transformer_matches_the_papers_matrix_formulas() {
    let (tokens, d) = (4, 3);
    let p = transformer(tokens, d, Activation::Relu, (1.0, 1.0, 1.0));
    let x = common::inputs(3, tokens * d, 7);
    let x2 = common::inputs(2, tokens * d, 8);
    let k = infinite_width(&p, &x, &x2).unwrap();
    for i in 0..3 {
        for j in 0..2 {
            let xi: Vec<f64> = x.row(i).iter().copied().collect();
            let xj: Vec<f64> = x2.row(j).iter().copied().collect();
            let (nngp, ntk) = matrix_formulas(&xi, &xj, tokens, d);
            assert!(
                (k.nngp[(i, j)] - nngp).abs() < prec::ROUND_OFF * nngp.abs().max(1.0),
                "nngp ({i}, {j})"
            );
            assert!(
                (k.ntk[(i, j)] - ntk).abs() < prec::ROUND_OFF * ntk.abs().max(1.0),
                "ntk ({i}, {j})"
            );
        }
    }
}

/// The finite Transformer's gradients (through the softmax logits and LayerNorm's
/// projections) against finite differences, and its per-group kernels summing up.
#[test]
fn finite_transformer_matches_finite_differences() {
    let p = transformer(3, 2, Activation::Gelu, (1.0, 1.2, 1.0));
    let net = p.init::<f64>(6, &mut StdRng::seed_from_u64(3)).unwrap();
    let x = common::inputs(3, 6, 4);
    let jac = common::finite_difference_jacobian(&net, &x, prec::FD_STEP);
    let exact = net.jacobian(&x).unwrap();
    assert!(
        rel_err(&exact, &jac) < prec::FINITE_DIFFERENCE,
        "{}",
        rel_err(&exact, &jac)
    );
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    assert!(rel_err(&theta, &(&jac * jac.transpose())) < prec::FINITE_DIFFERENCE);
}

/// Empirical NTKs of finite Transformers converge to the limit at rate n^{−1/2}.
#[test]
fn finite_transformers_converge_at_rate_one_over_root_width() {
    let p = transformer(3, 2, Activation::Relu, (1.0, 1.0, 1.0));
    let x = common::inputs(3, 6, 5);
    let study = width_convergence(&p, &x, &[64, 256, 1024], &[1, 2, 3, 4]).unwrap();
    common::assert_root_width_rate(&study, 0.15);
}

/// LayerNorm of a vector that is not Gaussian in the limit (a nonlinearity's output,
/// whose mean over the coordinates does not vanish) has no reduction: an error naming
/// the variables, while the finite network works. Malformed attention is an error.
#[test]
fn layer_norm_of_a_non_gaussian_vector_and_bad_attention_are_errors() {
    let mut p = Program::new(4);
    let x = p.input(0..2).unwrap();
    let w = p.weight(1.0).unwrap();
    let h = p.dense(w, x).unwrap();
    let z = p.apply(Activation::Relu, h).unwrap();
    let n = p.layer_norm(z).unwrap();
    p.output(n, 1.0).unwrap();
    let xs = common::inputs(3, 4, 1);
    let err = infinite_width(&p, &xs, &xs).unwrap_err().to_string();
    assert!(
        err.contains("LayerNorm") && err.contains(&format!("variable {}", z.index())),
        "{err}"
    );
    let net = p.init::<f64>(8, &mut StdRng::seed_from_u64(0)).unwrap();
    assert!(empirical_ntk(&net, &xs, &xs).is_ok());

    let mut q = Program::new(4);
    let a = q.input(0..2).unwrap();
    let w = q.weight(1.0).unwrap();
    let k = q.dense(w, a).unwrap();
    assert!(q.attention(&[], &[k], &[k]).is_err(), "no queries");
    assert!(
        q.attention(&[k], &[k, k], &[k]).is_err(),
        "a key without a value"
    );
    assert!(
        q.attention(&[a], &[k], &[k]).is_err(),
        "input columns as a query"
    );
    assert!(q.layer_norm(a).is_err(), "LayerNorm of input columns");
    let two = q.concat(&[k, k]).unwrap();
    assert!(q.layer_norm(two).is_err(), "LayerNorm of a concatenation");
}
