//! Peak memory of the empirical NTK: the output plus the per-layer features, never the
//! N × P Jacobian nor per-layer N × N temporaries.
//!
//! Its own test binary, because it installs a counting global allocator
//! (`peak_alloc`) and must not share the process with other tests.

use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{Activation, Mlp, MlpSpec, NtkModel, empirical_ntk};
use peak_alloc::PeakAlloc;

#[global_allocator]
static PEAK: PeakAlloc = PeakAlloc;

/// The tests measure the process's peak: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn peak_memory_is_output_plus_features() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (n, d, width) = (2048, 32, 256);
    let spec = MlpSpec::new(d)
        .hidden(width, Activation::Relu)
        .hidden(width, Activation::Relu)
        .hidden(width, Activation::Relu);
    let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(3)).unwrap();
    let x = DMatrix::from_fn(n, d, |i, j| ((i * d + j) as f64 * 0.1).sin());

    let f64_bytes = std::mem::size_of::<f64>();
    let output = n * n * f64_bytes;
    // X^{l−1} and G^l of every layer, for every sample.
    let widths = spec.widths();
    let per_sample: usize = widths.windows(2).map(|w| w[0] + w[1]).sum();
    let features = n * per_sample * f64_bytes;
    let jacobian = n * net.parameter_count() * f64_bytes;

    let baseline = PEAK.current_usage();
    PEAK.reset_peak_usage();
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    let peak = PEAK.peak_usage() - baseline;
    assert_eq!(theta.shape(), (n, n));

    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "peak {:.1} MB = output {:.1} MB + {:.1} MB; features {:.1} MB; Jacobian would be {:.1} MB",
        mb(peak),
        mb(output),
        mb(peak.saturating_sub(output)),
        mb(features),
        mb(jacobian)
    );
    // Output, the features (with room for one copy in flight), and a few block
    // buffers per thread; per-layer N × N temporaries would add 2·L·output.
    let bound = output + 2 * features + 16_000_000;
    assert!(
        peak <= bound,
        "peak {:.1} MB exceeds output + 2·features + 16 MB = {:.1} MB",
        mb(peak),
        mb(bound)
    );
}

/// With k outputs the features are O(N·k·Σ widths): the output gradients of the hidden
/// layers hold one block per output, and the output layer's own gradient (the
/// identity, N × k²) is never stored. At k = 1000 that k² would be 512 MB here.
#[test]
fn peak_memory_with_many_outputs_is_linear_in_k() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (n, d, width, k) = (64, 8, 32, 1000);
    let spec = MlpSpec::new(d).hidden(width, Activation::Tanh).outputs(k);
    let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(4)).unwrap();
    let x = DMatrix::from_fn(n, d, |i, j| ((i * d + j) as f64 * 0.3).cos());

    let f64_bytes = std::mem::size_of::<f64>();
    let output = n * n * f64_bytes;
    // X⁰ and G¹ (k blocks of the width) of the hidden layer, X¹ of the output layer.
    let features = n * (d + k * width + width) * f64_bytes;
    let baseline = PEAK.current_usage();
    PEAK.reset_peak_usage();
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    let peak = PEAK.peak_usage() - baseline;
    assert_eq!(theta.shape(), (n, n));
    let bound = output + 2 * features + 16_000_000;
    assert!(
        peak <= bound,
        "peak {:.1} MB exceeds output + 2·features + 16 MB = {:.1} MB",
        peak as f64 / 1e6,
        bound as f64 / 1e6
    );
}
