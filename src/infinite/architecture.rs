//! What the infinite-width functions take: an [`MlpSpec`] or a [`Program`].

use rand::Rng;

use crate::Scalar;
use crate::error::Result;
use crate::mlp::{Mlp, MlpSpec};
use crate::model::NtkModel;
use crate::program::{Program, ProgramNetwork};

/// A network architecture without its parameters: what [`infinite_width`](crate::infinite_width)
/// computes the limit of, and what [`width_convergence`](crate::width_convergence)
/// draws finite networks from. Implemented by [`MlpSpec`] and [`Program`].
pub trait Architecture: sealed::Sealed {
    /// The finite network of the architecture.
    type Network<T: Scalar>: NtkModel<T> + Clone;

    /// Input dimension $d$.
    fn input_dim(&self) -> usize;

    /// Output dimension $k$.
    fn output_dim(&self) -> usize;

    /// A network whose hidden layers all have width `width`, parameters drawn from `rng`.
    ///
    /// # Errors
    /// If the architecture is invalid or `width` is 0.
    fn init_with_width<T: Scalar, R: Rng + ?Sized>(
        &self,
        width: usize,
        rng: &mut R,
    ) -> Result<Self::Network<T>>;
}

/// The architecture as the infinite-width engines see it.
#[derive(Clone, Debug)]
pub enum Described {
    /// An MLP: the fused layer recursion.
    Mlp(MlpSpec),
    /// A program: the compiled tensor-program recursion.
    Program(Program),
}

pub(crate) mod sealed {
    use super::Described;
    use crate::error::Result;

    /// Implemented by the crate's architectures only.
    pub trait Sealed {
        /// The validated description whose limit `width` hidden units approach (the
        /// standard parameterization's NTK depends on the width).
        fn describe(&self, width: Option<usize>) -> Result<Described>;
    }
}

impl sealed::Sealed for MlpSpec {
    fn describe(&self, width: Option<usize>) -> Result<Described> {
        self.validate()?;
        Ok(Described::Mlp(match width {
            Some(w) => self.with_hidden_width(w),
            None => self.clone(),
        }))
    }
}

impl Architecture for MlpSpec {
    type Network<T: Scalar> = Mlp<T>;

    fn input_dim(&self) -> usize {
        MlpSpec::input_dim(self)
    }

    fn output_dim(&self) -> usize {
        MlpSpec::output_dim(self)
    }

    fn init_with_width<T: Scalar, R: Rng + ?Sized>(
        &self,
        width: usize,
        rng: &mut R,
    ) -> Result<Mlp<T>> {
        self.with_hidden_width(width).init(rng)
    }
}

impl sealed::Sealed for Program {
    fn describe(&self, _width: Option<usize>) -> Result<Described> {
        self.validate()?;
        Ok(Described::Program(self.clone()))
    }
}

impl Architecture for Program {
    type Network<T: Scalar> = ProgramNetwork<T>;

    fn input_dim(&self) -> usize {
        Program::input_dim(self)
    }

    fn output_dim(&self) -> usize {
        Program::output_dim(self)
    }

    fn init_with_width<T: Scalar, R: Rng + ?Sized>(
        &self,
        width: usize,
        rng: &mut R,
    ) -> Result<ProgramNetwork<T>> {
        self.init(width, rng)
    }
}
