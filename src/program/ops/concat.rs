//! Concatenation, $(a_1; …; a_K)$: a convolution's window, or a flattening.
//!
//! - **Finite:** the parts' columns side by side; each part receives its columns of the
//!   gradient.
//! - **Limit:** $K$ hidden vectors make $K$ blocks, and a weight applied to them sees the
//!   average $(1/K) Σ_k E[z_k z̄_k]$ (its fan-in is $K·n$); each part receives its blocks
//!   of the backward combination.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
use crate::infinite::program::{BackwardTerms, Compiler, Form, LimitGradients};
use crate::program::{Program, Var, Width, empty};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// The parts stacked; no part is itself a concatenation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Concat {
    pub(crate) parts: Vec<usize>,
}

impl Program {
    /// The parts stacked into one vector (a convolution's window, or a flattening):
    /// $K$ hidden vectors of width $n$ make one of width $K·n$, which a weight then sees as
    /// its fan-in.
    ///
    /// # Errors
    /// An empty list, a foreign handle, or a mix of input-width and hidden parts (a
    /// fan-in is either finite or grows with $n$); [`Error::AllocationFailed`] if the
    /// input widths add up beyond `usize`.
    pub fn concat(&mut self, parts: &[Var]) -> Result<Var> {
        if parts.is_empty() {
            return Err(empty("concat"));
        }
        let mut flat = Vec::with_capacity(parts.len());
        for &v in parts {
            let v = self.check_var("concat part", v)?;
            match &self.nodes[v].op {
                Op::Concat(inner) => flat.extend_from_slice(&inner.parts),
                _ => flat.push(v),
            }
        }
        let mut input = 0_usize;
        let mut hidden = 0_usize;
        for &v in &flat {
            let (sum, part) = match self.nodes[v].width {
                Width::Input(d) => (&mut input, d),
                Width::Hidden(k) => (&mut hidden, k),
            };
            *sum = sum
                .checked_add(part)
                .ok_or_else(|| Error::AllocationFailed {
                    what: format!("a concatenation of {} parts", flat.len()),
                    size: "a width that overflows usize".into(),
                })?;
        }
        let width = match (input, hidden) {
            (d, 0) => Width::Input(d),
            (0, k) => Width::Hidden(k),
            _ => {
                return Err(Error::InvalidParameter {
                    parameter: "concat parts",
                    value: format!("{input} input columns and {hidden} hidden vectors"),
                    reason: "a concatenation cannot mix input columns with hidden vectors",
                });
            }
        };
        Ok(self.push(Op::Concat(Concat { parts: flat }), width))
    }
}

impl<T: Scalar> FiniteRule<T> for Concat {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let cols = self.parts.iter().map(|&p| at.values[p].ncols()).sum();
        let mut c = DMatrix::<T>::zeros(at.x.nrows(), cols);
        let mut offset = 0;
        for &p in &self.parts {
            let v = &at.values[p];
            c.columns_mut(offset, v.ncols()).copy_from(v);
            offset += v.ncols();
        }
        c.into()
    }

    fn backward(
        &self,
        at: &FiniteBackward<'_, T>,
        _: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        let outputs = grads.outputs;
        let total = g.ncols() / outputs;
        let mut offset = 0;
        for &p in &self.parts {
            let m = at.values[p].ncols();
            if let Some(acc) = grads.slot(p, m) {
                for c in 0..outputs {
                    let mut block = acc.columns_mut(c * m, m);
                    block += g.columns(c * total + offset, m);
                }
            }
            offset += m;
        }
    }
}

impl LimitRule for Concat {
    fn form(&self, c: &mut Compiler<'_>, _: usize) -> Form {
        let mut blocks = Vec::new();
        for &p in &self.parts {
            match &c.forms[p] {
                Form::Blocks(b) => blocks.extend_from_slice(b),
                bad @ Form::NotGaussian { .. } => return bad.clone(),
                Form::Fixed(_) => unreachable!("hidden concatenations have hidden parts"),
            }
        }
        Form::Blocks(blocks)
    }

    fn backward(
        &self,
        c: &mut Compiler<'_>,
        _: usize,
        here: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()> {
        let mut offset = 0;
        for &p in &self.parts {
            let kp = c.program.nodes[p].width.hidden_blocks();
            for k in 0..kp {
                grads.add(p, k, &here[offset + k], 1.0);
            }
            offset += kp;
        }
        Ok(())
    }

    fn write_structure(&self, w: &mut Writer) {
        w.list(&self.parts);
    }
}

#[cfg(test)]
mod tests {
    use crate::program::{Op, Program, Var, Width};

    #[test]
    fn concatenations_flatten_and_add_widths() {
        let mut p = Program::new(6);
        let parts: Vec<Var> = (0..3).map(|t| p.input(2 * t..2 * t + 2).unwrap()).collect();
        let inner = p.concat(&parts[..2]).unwrap();
        let c = p.concat(&[inner, parts[2]]).unwrap();
        assert_eq!(p.nodes[c.index].width, Width::Input(6));
        match &p.nodes[c.index].op {
            Op::Concat(flat) => assert_eq!(flat.parts.len(), 3),
            other => panic!("{other:?}"),
        }
        let w = p.weight(1.0).unwrap();
        let h = p.dense(w, c).unwrap();
        let hh = p.concat(&[h, h]).unwrap();
        assert_eq!(p.nodes[hh.index].width, Width::Hidden(2));
    }

}
