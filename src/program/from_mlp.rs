//! The program of an MLP, so that everything written for programs runs on MLPs too.

use crate::error::{Error, Result};
use crate::mlp::{MlpSpec, Parameterization};

use super::{Program, Readout};

/// The program of an MLP: `dense`, `add_bias` and `apply` per hidden layer, then a
/// readout with the spec's $σ_w$, $σ_b$ and $k$ outputs. Its kernels equal the spec's, and
/// its network at a width $n$ draws the same parameters, in the same order, as the
/// spec's with every hidden width $n$.
///
/// ```
/// use ntk::{Activation, MlpSpec, Program};
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(3).hidden(64, Activation::Relu).bias_std(0.1);
/// let program = Program::try_from(&spec)?;
/// assert_eq!(program.output_dim(), 1);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// An invalid spec ([`MlpSpec::validate`]), or one in the standard parameterization
/// (programs use the NTK parameterization).
impl TryFrom<&MlpSpec> for Program {
    type Error = Error;

    fn try_from(spec: &MlpSpec) -> Result<Program> {
        if spec.parameterization_value() != Parameterization::Ntk {
            return Err(Error::InvalidParameter {
                parameter: "parameterization",
                value: "Standard".into(),
                reason: "programs use the NTK parameterization",
            });
        }
        Program::mlp(spec, false)
    }
}

impl Program {
    /// The program of `spec` whose NTK coefficients follow the spec's
    /// parameterization and hidden widths (for the per-layer limit of an MLP in
    /// either parameterization; its finite network is not the spec's in the standard
    /// parameterization).
    pub(crate) fn with_widths_of(spec: &MlpSpec) -> Result<Program> {
        Program::mlp(spec, spec.parameterization_value() != Parameterization::Ntk)
    }

    fn mlp(spec: &MlpSpec, standard: bool) -> Result<Program> {
        spec.validate()?;
        let mut p = Program::new(spec.input_dim());
        let (sw, sb) = (spec.weight_std_value(), spec.bias_std_value());
        let widths = spec.widths();
        let mut z = p.input(0..spec.input_dim())?;
        for (l, (_, activation)) in spec.hidden_layers().iter().enumerate() {
            let w = p.weight(sw)?;
            let mut h = p.dense(w, z)?;
            if standard {
                p.weights[w.index].ntk_coef = Some(widths[l] as f64);
            }
            if spec.has_bias() {
                let b = p.bias(sb)?;
                h = p.add_bias(h, b)?;
                if standard {
                    p.biases[b.index].ntk_coef = Some(1.0);
                }
            }
            z = p.apply(activation.clone(), h)?;
        }
        p.readout(
            z,
            Readout::new(sw)
                .bias_std(if spec.has_bias() { sb } else { 0.0 })
                .outputs(spec.output_dim()),
        )?;
        if standard {
            let last = widths[widths.len() - 2] as f64;
            p.readout_ntk_coef = Some((last, 1.0));
        }
        Ok(p)
    }
}
