//! Convolutions as sugar: one shared weight applied to the stacked windows of a
//! sequence or an image, so that their finite and limit rules are those of
//! [`dense`](Program::dense) and [`concat`](Program::concat).

use crate::error::{Error, Result};

use super::{Program, Var, Weight, empty};

/// How a convolution ([`Program::conv`], [`Program::conv2d`]) treats the ends of the
/// sequence or the edges of the image. (Zero padding, neural-tangents' `'SAME'`, is
/// not offered yet; the enum is non-exhaustive so that it can be.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Padding {
    /// Positions wrap around (neural-tangents' `'CIRCULAR'`): one output per position.
    Circular,
    /// Only full windows (`'VALID'`): $P − \text{taps} + 1$ outputs for $P$ positions.
    Valid,
}

impl Program {
    /// A 1-D convolution over a sequence of positions (one variable each, all of the
    /// same width): output $q$ is `dense(weight, concat(window_q))`, the same weight at
    /// every position, so its fan-in is `taps` times a position's width
    /// (neural-tangents' `Conv` normalisation). Window $q$ holds the positions
    /// $q − ⌊(\text{taps} − 1)/2⌋, …, q + ⌈(\text{taps} − 1)/2⌉$, taken modulo the length
    /// with [`Padding::Circular`]; with [`Padding::Valid`] it holds $q, …, q + \text{taps} − 1$
    /// and there are $P − \text{taps} + 1$ outputs for $P$ positions. Returns the
    /// pre-activations, one per output position (add a bias and apply $φ$ to each). For
    /// images, [`conv2d`](Program::conv2d).
    ///
    /// ```
    /// use ntk::{Activation, Padding, Program};
    /// # fn main() -> Result<(), ntk::Error> {
    /// // 8 positions × 3 channels, two circular 3-tap ReLU convolutions, average pooling.
    /// let mut p = Program::new(8 * 3);
    /// let mut z = (0..8).map(|q| p.input(3 * q..3 * q + 3)).collect::<Result<Vec<_>, _>>()?;
    /// for _ in 0..2 {
    ///     let (w, b) = (p.weight(1.4)?, p.bias(0.1)?);
    ///     z = p
    ///         .conv(w, &z, 3, Padding::Circular)?
    ///         .into_iter()
    ///         .map(|h| p.add_bias(h, b).and_then(|h| p.apply(Activation::Relu, h)))
    ///         .collect::<Result<_, _>>()?;
    /// }
    /// let pooled = p.mean(&z)?;
    /// p.output(pooled, 1.0)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// No positions, zero taps, more taps than positions with [`Padding::Valid`], a
    /// foreign handle, positions of different widths, or a fan-in different from the
    /// weight's earlier uses.
    pub fn conv(
        &mut self,
        weight: Weight,
        positions: &[Var],
        taps: usize,
        padding: Padding,
    ) -> Result<Vec<Var>> {
        let (out, _) = self.conv_nd(weight, positions, &[positions.len()], &[taps], padding)?;
        Ok(out)
    }

    /// A 2-D convolution over a `height × width` grid of positions (an image, one
    /// variable per pixel, row-major, all of the same width) with a `taps.0 × taps.1`
    /// filter: output $(r, c)$ is `dense(weight, concat(window_{r,c}))`, the window's
    /// pixels row-major, so the fan-in is $\text{taps}_0 · \text{taps}_1$ times a pixel's
    /// width. Along each axis the windows are those of [`conv`](Program::conv) (circular:
    /// starting $⌊(\text{taps} − 1)/2⌋$ before the output's position, modulo the length;
    /// valid: full windows only). Returns the outputs row-major, with their grid's shape:
    /// `(height, width)` for [`Padding::Circular`], `(height − taps.0 + 1, width − taps.1 + 1)`
    /// for [`Padding::Valid`]; neural-tangents' `Conv(·, taps, 'CIRCULAR' | 'VALID')` on
    /// NHWC images.
    ///
    /// # Errors
    /// As [`conv`](Program::conv), and [`Error::InvalidParameter`] if `positions` does
    /// not hold `height · width` variables.
    pub fn conv2d(
        &mut self,
        weight: Weight,
        positions: &[Var],
        (height, width): (usize, usize),
        taps: (usize, usize),
        padding: Padding,
    ) -> Result<(Vec<Var>, (usize, usize))> {
        if height.checked_mul(width) != Some(positions.len()) {
            return Err(Error::InvalidParameter {
                parameter: "conv2d positions",
                value: format!(
                    "{} variables for a {height} × {width} grid",
                    positions.len()
                ),
                reason: "a grid needs one variable per pixel, row-major",
            });
        }
        let (out, shape) = self.conv_nd(
            weight,
            positions,
            &[height, width],
            &[taps.0, taps.1],
            padding,
        )?;
        Ok((out, (shape[0], shape[1])))
    }

    /// The convolution over a row-major grid of shape `dims` with a filter of shape
    /// `taps`: one `dense(weight, concat(window))` per output position, row-major, and
    /// the outputs' grid shape.
    fn conv_nd(
        &mut self,
        weight: Weight,
        positions: &[Var],
        dims: &[usize],
        taps: &[usize],
        padding: Padding,
    ) -> Result<(Vec<Var>, Vec<usize>)> {
        if positions.is_empty() {
            return Err(empty("conv"));
        }
        self.same_width("conv positions", positions)?;
        // Per axis: the number of outputs, and the input index of tap j at output q.
        let mut axes: Vec<(usize, Vec<Vec<usize>>)> = Vec::with_capacity(dims.len());
        for (&count, &taps) in dims.iter().zip(taps) {
            if taps == 0 {
                return Err(Error::InvalidParameter {
                    parameter: "taps",
                    value: "0".into(),
                    reason: "a filter needs at least one tap",
                });
            }
            let outputs = match padding {
                Padding::Circular => count,
                Padding::Valid if taps <= count => count - taps + 1,
                Padding::Valid => {
                    return Err(Error::InvalidParameter {
                        parameter: "taps",
                        value: format!("{taps} taps over {count} positions"),
                        reason: "a valid convolution needs at least as many positions as taps",
                    });
                }
            };
            // Circular windows start (taps − 1)/2 positions to the left (as JAX pads:
            // ⌊(taps − 1)/2⌋ before, the rest after).
            let start = ((taps - 1) / 2) % count;
            let windows = (0..outputs)
                .map(|q| {
                    (0..taps)
                        .map(|j| match padding {
                            Padding::Circular => (q + j % count + count - start) % count,
                            Padding::Valid => q + j,
                        })
                        .collect()
                })
                .collect();
            axes.push((outputs, windows));
        }
        // Row-major products over the axes: output positions, and each one's window.
        let mut outputs: Vec<Vec<usize>> = vec![Vec::new()];
        for (count, _) in &axes {
            outputs = outputs
                .iter()
                .flat_map(|o| (0..*count).map(move |q| [o.as_slice(), &[q]].concat()))
                .collect();
        }
        let shape = axes.iter().map(|(count, _)| *count).collect();
        let vars = outputs
            .iter()
            .map(|out| {
                let mut window: Vec<usize> = vec![0];
                for (axis, &q) in out.iter().enumerate() {
                    let (dim, taps) = (dims[axis], &axes[axis].1[q]);
                    window = window
                        .iter()
                        .flat_map(|&flat| taps.iter().map(move |&i| flat * dim + i))
                        .collect();
                }
                let parts: Vec<Var> = window.iter().map(|&i| positions[i]).collect();
                let stacked = self.concat(&parts)?;
                self.dense(weight, stacked)
            })
            .collect::<Result<_>>()?;
        Ok((vars, shape))
    }
}
