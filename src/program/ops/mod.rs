//! The operations of a program, one file each.
//!
//! A file holds everything about its operation, so that its finite rule can be read
//! beside its limit rule:
//!
//! - its builder method on [`Program`](crate::Program) (the shape rule and the
//!   validation);
//! - [`FiniteRule`]: its forward pass on a batch and its backward pass (the
//!   vector–Jacobian product, per output);
//! - [`LimitRule`]: its infinite-width form (what the variable is in the limit: a
//!   combination of Gaussian and φ-atoms with per-sample coefficients), the backward
//!   combination it sends to its inputs, and the per-sample scalars it introduces.
//!
//! The interpreters (the finite network, the deterministic input-width values, the
//! limit compiler) are loops over the variables that dispatch here and know no
//! operation by name. A new operation is a file in this folder, one line in
//! [`operations!`], and its builder method.

use nalgebra::{DMatrix, DVector};

use crate::Scalar;
use crate::error::Result;
use crate::infinite::cache::Writer;
use crate::infinite::program::{BackwardTerms, Compiler, Form, LimitGradients};
use crate::infinite::tape::Val;

use super::{Node, Program, Width};

/// Registers the operations: `module::Type` per line declares the module, makes `Type`
/// a variant of [`Op`], and routes the two rule traits to it.
macro_rules! operations {
    ($($module:ident :: $name:ident),* $(,)?) => {
        $(mod $module; pub(crate) use $module::$name;)*

        /// What a variable computes: one of the operations of this folder.
        #[derive(Clone, Debug)]
        pub(crate) enum Op {
            $(
                #[doc = concat!("See [`", stringify!($name), "`].")]
                $name($name),
            )*
        }

        impl Op {
            /// The operation's finite rules, in scalar type `T`.
            pub(crate) fn finite<T: Scalar>(&self) -> &dyn FiniteRule<T> {
                match self { $(Op::$name(op) => op,)* }
            }

            /// The operation's infinite-width rules.
            pub(crate) fn limit(&self) -> &dyn LimitRule {
                match self { $(Op::$name(op) => op,)* }
            }

            /// The operation's place in the registry (tells operations apart in a
            /// program's structure).
            pub(crate) fn tag(&self) -> usize {
                let mut tag = 0;
                $(
                    if let Op::$name(_) = self {
                        return tag;
                    }
                    tag += 1;
                )*
                tag
            }
        }
    };
}

operations! {
    input::Input,
    dense::Dense,
    add_bias::AddBias,
    sum::Sum,
    concat::Concat,
    apply::Apply,
    layer_norm::LayerNorm,
    attention::Attend,
    zeros::Zeros,
    batch_norm::BatchNorm,
}

pub(crate) use attention::softmax_in_place;

/// The parameters of a finite network of hidden width $n$ = `width`: per weight $Wᵀ$
/// ($n_{in} × n$, whose column-major storage is $W$ row-major), per bias $b$.
#[derive(Clone, Debug)]
pub(crate) struct Parameters<T: Scalar> {
    pub(crate) width: usize,
    pub(crate) weights: Vec<DMatrix<T>>,
    pub(crate) biases: Vec<DVector<T>>,
}

impl<T: Scalar> Parameters<T> {
    /// $s_W = σ_W/\sqrt{n_{in}}$ of weight `w` of `program`.
    pub(crate) fn weight_scale(&self, program: &Program, w: usize) -> T {
        T::from_f64_lossy(program.weights[w].std / (self.weights[w].nrows() as f64).sqrt())
    }
}

/// What an operation's finite forward pass sees: the batch, the values of the earlier
/// variables ($N × \text{columns}$ each), and the network's parameters (none when only
/// the deterministic input-width variables are evaluated).
pub(crate) struct FiniteForward<'a, T: Scalar> {
    pub(crate) program: &'a Program,
    pub(crate) x: &'a DMatrix<T>,
    pub(crate) values: &'a [DMatrix<T>],
    pub(crate) parameters: Option<&'a Parameters<T>>,
}

impl<T: Scalar> FiniteForward<'_, T> {
    /// The parameters, which every operation of hidden width has.
    pub(crate) fn parameters(&self) -> &Parameters<T> {
        self.parameters
            .expect("parameters are given to every variable of hidden width")
    }
}

/// A variable's value, and what its backward pass keeps from the forward one (the
/// attention weights).
pub(crate) struct Evaluated<T: Scalar> {
    pub(crate) value: DMatrix<T>,
    pub(crate) saved: Option<DMatrix<T>>,
}

impl<T: Scalar> From<DMatrix<T>> for Evaluated<T> {
    fn from(value: DMatrix<T>) -> Self {
        Evaluated { value, saved: None }
    }
}

/// What an operation's finite backward pass sees: the forward pass's values and saved
/// matrices, and the parameters.
pub(crate) struct FiniteBackward<'a, T: Scalar> {
    pub(crate) program: &'a Program,
    pub(crate) values: &'a [DMatrix<T>],
    pub(crate) saved: &'a [Option<DMatrix<T>>],
    pub(crate) parameters: &'a Parameters<T>,
}

/// $∂f/∂v$ of every variable $v$, accumulated: $N × (\text{outputs}·\text{columns})$,
/// column block $c$ for output $c$. Without batch coupling the outputs are the model's
/// $k$ and row $i$ holds $∂f_c(x_i)/∂v(x_i)$; in a batch-coupled network they are the
/// $N·k$ pairs (sample $i$, output $c$), block $i·k + c$, and row $j$ holds
/// $∂f_c(x_i)/∂v(x_j)$. The rules are linear in `g` and act on every block alike.
/// Variables of input width take none (no parameter lies before them).
pub(crate) struct Gradients<'a, T: Scalar> {
    pub(crate) nodes: &'a [Node],
    pub(crate) slots: Vec<Option<DMatrix<T>>>,
    pub(crate) samples: usize,
    pub(crate) outputs: usize,
}

impl<T: Scalar> Gradients<'_, T> {
    /// Whether variable `v` takes a gradient.
    pub(crate) fn takes(&self, v: usize) -> bool {
        matches!(self.nodes[v].width, Width::Hidden(_))
    }

    /// The accumulator of variable `v` with `columns` columns per output, created as
    /// zeros on first use (`None` for a variable of input width).
    pub(crate) fn slot(&mut self, v: usize, columns: usize) -> Option<&mut DMatrix<T>> {
        if !self.takes(v) {
            return None;
        }
        let (n, k) = (self.samples, self.outputs);
        Some(self.slots[v].get_or_insert_with(|| DMatrix::zeros(n, k * columns)))
    }

    /// $∂f/∂v$ += `scale` · `g` (all outputs).
    pub(crate) fn add(&mut self, v: usize, g: &DMatrix<T>, scale: T) {
        if !self.takes(v) {
            return;
        }
        match &mut self.slots[v] {
            Some(acc) => acc.zip_apply(g, |a, b| *a += scale * b),
            None => self.slots[v] = Some(g * scale),
        }
    }
}

/// An operation's finite rules.
pub(crate) trait FiniteRule<T: Scalar> {
    /// The variable's value on the batch.
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T>;

    /// Sends $g = ∂f/∂(\text{variable } i)$ ($N × k·\text{columns}$) to the variable's inputs.
    fn backward(
        &self,
        at: &FiniteBackward<'_, T>,
        i: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    );

    /// Checked before [`backward`](Self::backward): whether the operation has a
    /// derivative at every sample of the batch (every operation but LayerNorm always does).
    ///
    /// # Errors
    /// [`crate::Error::NonFiniteResult`] naming variable `i` and the sample.
    fn differentiable(&self, _at: &FiniteBackward<'_, T>, _i: usize) -> Result<()> {
        Ok(())
    }

    /// Whether the operation couples the samples of a batch (its value on one sample
    /// depends on the others: batch normalisation). A program with such an operation is
    /// batch-coupled: its backward pass carries, for every output sample, the gradient
    /// with respect to every sample (see [`crate::NtkModel::batch_coupled`]).
    fn couples_samples(&self) -> bool {
        false
    }

    /// Why the variable's value can fail to be finite on finite inputs, as a clause for
    /// the forward pass's error.
    fn non_finite_reason(&self) -> String {
        "it exceeds the range of the scalar type (the inputs, a σ or the depth is too \
         large)"
            .into()
    }
}

/// An operation's infinite-width rules (see [`crate::infinite`] for the recursion).
pub(crate) trait LimitRule {
    /// The limit form of variable `i` (of hidden width), from the forms of the earlier
    /// variables.
    fn form(&self, c: &mut Compiler<'_>, i: usize) -> Form;

    /// Sends the backward combination `here` of variable `i` (one per block) to its
    /// inputs.
    ///
    /// # Errors
    /// [`crate::Error::OutsideLimit`] where the gradient has no limit form.
    fn backward(
        &self,
        c: &mut Compiler<'_>,
        i: usize,
        here: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()>;

    /// The per-sample scalar `index` that variable `i` put into its form, on the
    /// diagonal tape.
    ///
    /// # Errors
    /// Where the scalar is undefined (e.g. LayerNorm of a vanishing vector).
    fn sample_scalar(&self, _c: &mut Compiler<'_>, i: usize, _index: u32) -> Result<Val> {
        unreachable!("variable {i} introduces no per-sample scalars")
    }

    /// Writes the operation's fields (variables, parameters, activations) into a
    /// program's structure, the key of its compiled limit: equal structures compute
    /// the same kernels.
    fn write_structure(&self, w: &mut Writer);

    /// Why a limit kernel of a program with this operation may fail to be finite,
    /// beyond overflow (named in the error).
    fn non_finite_cause(&self) -> Option<&'static str> {
        None
    }
}
