//! Convolutions and average pooling as sugar: one shared weight applied to the stacked
//! windows of a sequence or an image, and means over windows, so that their finite and
//! limit rules are those of [`dense`](Program::dense), [`concat`](Program::concat),
//! [`mean`](Program::mean) and, for zero padding, the zero vector. The windows are
//! documented at [`Padding`].

use crate::error::{Error, Result};

use super::{Program, Var, Weight, empty};

/// How a convolution ([`Program::conv`], [`Program::conv2d`],
/// [`Program::conv2d_strided`]) treats the ends of the sequence or the edges of the
/// image.
///
/// Windows follow neural-tangents' `stax.Conv` and `stax.AvgPool` (JAX's
/// `conv_general_dilated` and `reduce_window`) exactly. Along an axis of $P$ positions,
/// with $k$ taps and stride $s$:
///
/// | padding | outputs | window of output $q$ |
/// |---|---|---|
/// | [`Padding::Valid`] | $⌊(P − k)/s⌋ + 1$ | $qs, …, qs + k − 1$ |
/// | [`Padding::Same`] | $⌈P/s⌉$ | $qs − b, …, qs − b + k − 1$, zeros past the edges |
/// | [`Padding::Circular`] | $⌈P/s⌉$ | the same positions modulo $P$ |
///
/// where $b = ⌊t/2⌋$ of TensorFlow's total padding $t = \max((⌈P/s⌉ − 1)s + k − P, 0)$
/// ($b = ⌊(k − 1)/2⌋$ at stride 1). The fan-in is the filter's taps times a position's
/// width at every output, also where the window reaches past the edge (`stax.Conv`'s
/// normalisation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Padding {
    /// Positions wrap around (neural-tangents' `'CIRCULAR'`): $⌈P/s⌉$ outputs.
    Circular,
    /// Only full windows (`'VALID'`): $⌊(P − \text{taps})/s⌋ + 1$ outputs for $P$ positions.
    Valid,
    /// Zero padding (`'SAME'`, TensorFlow's split: the extra zero after): $⌈P/s⌉$
    /// outputs.
    Same,
}

/// What a convolution or an average pooling built, recorded so that the infinite-width
/// engine can compute its limit as one array operation on the covariances over pairs of
/// positions (a stencil), rather than position by position. The program's variables
/// are unchanged by it: it only names a structure they already have.
#[derive(Clone, Debug)]
pub(crate) struct GridLayer {
    /// The convolution's weight, by index (`None`: average pooling).
    pub(crate) weight: Option<usize>,
    /// The input positions' variables, row-major over `input_dims`.
    pub(crate) input: Vec<usize>,
    /// The input grid's (rows, columns); a sequence is one row.
    pub(crate) input_dims: [usize; 2],
    /// The output positions' variables, row-major.
    pub(crate) output: Vec<usize>,
    /// The windows along the rows and along the columns.
    pub(crate) axes: [AxisWindows; 2],
}

/// The windows of a row-major grid: per output position (row-major), its positions
/// row-major (`None` past the edge of a zero-padded grid), and the outputs' grid shape.
type Windows = (Vec<Vec<Option<usize>>>, Vec<usize>);

impl Program {
    /// A 1-D convolution over a sequence of positions (one variable each, all of the
    /// same width): output $q$ is `dense(weight, concat(window_q))`, the same weight at
    /// every position, so its fan-in is `taps` times a position's width
    /// (neural-tangents' `Conv` normalisation). The windows are those of the [table at
    /// `Padding`](Padding) at stride 1: positions $q − ⌊(\text{taps} − 1)/2⌋, …$ for
    /// [`Padding::Circular`] (modulo the length) and [`Padding::Same`] (zeros past the
    /// ends), $q, …, q + \text{taps} − 1$ for [`Padding::Valid`]. Returns the
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
        if positions.is_empty() {
            return Err(empty("conv"));
        }
        let axes = axis_windows(&[positions.len()], &[taps], &[1], padding)?;
        let layer = [vec![vec![Some(0)]], axes[0].clone()];
        self.conv_windows(weight, positions, [1, positions.len()], layer)
    }

    /// A 2-D convolution over a `height × width` grid of positions (an image, one
    /// variable per pixel, row-major, all of the same width) with a `taps.0 × taps.1`
    /// filter at stride 1: output $(r, c)$ is `dense(weight, concat(window_{r,c}))`, the
    /// window's pixels row-major, so the fan-in is $\text{taps}_0 · \text{taps}_1$ times a
    /// pixel's width. Returns the outputs row-major, with their grid's shape (see the
    /// [table at `Padding`](Padding)); neural-tangents' `Conv(·, taps, padding)` on NHWC images.
    ///
    /// ```
    /// use ntk::{Activation, Padding, Program};
    /// # fn main() -> Result<(), ntk::Error> {
    /// // A 4 × 4 image of 2 channels: a SAME 3 × 3 convolution keeps the grid.
    /// let mut p = Program::new(4 * 4 * 2);
    /// let pixels = (0..16).map(|q| p.input(2 * q..2 * q + 2)).collect::<Result<Vec<_>, _>>()?;
    /// let w = p.weight(2f64.sqrt())?;
    /// let (ys, shape) = p.conv2d(w, &pixels, (4, 4), (3, 3), Padding::Same)?;
    /// assert_eq!((ys.len(), shape), (16, (4, 4)));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`conv`](Program::conv), and [`Error::InvalidParameter`] if `positions` does
    /// not hold `height · width` variables.
    pub fn conv2d(
        &mut self,
        weight: Weight,
        positions: &[Var],
        grid: (usize, usize),
        taps: (usize, usize),
        padding: Padding,
    ) -> Result<(Vec<Var>, (usize, usize))> {
        self.conv2d_strided(weight, positions, grid, taps, (1, 1), padding)
    }

    /// [`conv2d`](Program::conv2d) with strides `(rows, columns)`: output $(r, c)$'s
    /// window starts at row $r·s_0$ and column $c·s_1$ of the (padded) grid (see the
    /// [table at `Padding`](Padding)); neural-tangents' `Conv(·, taps, strides, padding)`.
    ///
    /// # Errors
    /// As [`conv2d`](Program::conv2d), and [`Error::InvalidParameter`] for a zero stride.
    pub fn conv2d_strided(
        &mut self,
        weight: Weight,
        positions: &[Var],
        (height, width): (usize, usize),
        taps: (usize, usize),
        strides: (usize, usize),
        padding: Padding,
    ) -> Result<(Vec<Var>, (usize, usize))> {
        check_grid("conv2d positions", positions, height, width)?;
        let [rows, columns]: [AxisWindows; 2] = axis_windows(
            &[height, width],
            &[taps.0, taps.1],
            &[strides.0, strides.1],
            padding,
        )?
        .try_into()
        .expect("two axes");
        let shape = (rows.len(), columns.len());
        let out = self.conv_windows(weight, positions, [height, width], [rows, columns])?;
        Ok((out, shape))
    }

    /// Average pooling over a `height × width` grid of positions (one variable per
    /// pixel, row-major, all of the same width): output $(r, c)$ is the `mean` of the
    /// `window.0 × window.1` positions starting at row $r·s_0$ and column $c·s_1$, full
    /// windows only. neural-tangents' `AvgPool(window, strides, padding='VALID')`
    /// (`normalize_edges` plays no part without padding). Returns the outputs row-major
    /// and their grid's shape $(⌊(h − k_0)/s_0⌋ + 1, ⌊(w − k_1)/s_1⌋ + 1)$.
    ///
    /// # Errors
    /// No positions, a zero or too large window, a zero stride, a foreign handle,
    /// positions of different widths, or `positions` not holding `height · width`
    /// variables.
    pub fn avg_pool2d(
        &mut self,
        positions: &[Var],
        (height, width): (usize, usize),
        window: (usize, usize),
        strides: (usize, usize),
    ) -> Result<(Vec<Var>, (usize, usize))> {
        check_grid("avg_pool2d positions", positions, height, width)?;
        self.same_width("avg_pool2d positions", positions)?;
        let axes = axis_windows(
            &[height, width],
            &[window.0, window.1],
            &[strides.0, strides.1],
            Padding::Valid,
        )?;
        let (windows, shape) = grid_windows(&[height, width], &axes);
        let pooled: Vec<Var> = windows
            .iter()
            .map(|window| {
                let parts: Vec<Var> = window.iter().flatten().map(|&i| positions[i]).collect();
                self.mean(&parts)
            })
            .collect::<Result<_>>()?;
        self.grid_layers.push(GridLayer {
            weight: None,
            input: positions.iter().map(|v| v.index).collect(),
            input_dims: [height, width],
            output: pooled.iter().map(|v| v.index).collect(),
            axes: axes.try_into().expect("two axes"),
        });
        Ok((pooled, (shape[0], shape[1])))
    }

    /// One `dense(weight, concat(window))` per window of the `dims` grid whose axes have
    /// the windows `axes`, the windows' missing positions zero vectors; recorded as a
    /// [`GridLayer`].
    fn conv_windows(
        &mut self,
        weight: Weight,
        positions: &[Var],
        dims: [usize; 2],
        axes: [AxisWindows; 2],
    ) -> Result<Vec<Var>> {
        if positions.is_empty() {
            return Err(empty("conv"));
        }
        self.same_width("conv positions", positions)?;
        let (windows, _) = grid_windows(&dims, &axes);
        let mut zero = None;
        let vars = windows
            .iter()
            .map(|window| {
                let parts: Vec<Var> = window
                    .iter()
                    .map(|&i| match i {
                        Some(i) => positions[i],
                        None => *zero.get_or_insert_with(|| self.zeros_like(positions[0].index)),
                    })
                    .collect();
                let stacked = self.concat(&parts)?;
                self.dense(weight, stacked)
            })
            .collect::<Result<Vec<Var>>>()?;
        self.grid_layers.push(GridLayer {
            weight: Some(weight.index),
            input: positions.iter().map(|v| v.index).collect(),
            input_dims: dims,
            output: vars.iter().map(|v| v.index).collect(),
            axes,
        });
        Ok(vars)
    }
}

/// Errors unless `positions` holds one variable per pixel of a `height × width` grid.
fn check_grid(
    parameter: &'static str,
    positions: &[Var],
    height: usize,
    width: usize,
) -> Result<()> {
    if height.checked_mul(width) != Some(positions.len()) {
        return Err(Error::InvalidParameter {
            parameter,
            value: format!(
                "{} variables for a {height} × {width} grid",
                positions.len()
            ),
            reason: "a grid needs one variable per pixel, row-major",
        });
    }
    Ok(())
}

/// One axis of a filter's windows: per output, per tap, the input position along the
/// axis (`None` past the edge of a zero-padded axis).
pub(crate) type AxisWindows = Vec<Vec<Option<usize>>>;

/// The windows along every axis of a grid of shape `dims` of a filter of shape `taps` at
/// `strides` (see the [table at `Padding`](Padding)).
fn axis_windows(
    dims: &[usize],
    taps: &[usize],
    strides: &[usize],
    padding: Padding,
) -> Result<Vec<AxisWindows>> {
    // Per axis: the number of outputs.
    let mut counts: Vec<usize> = Vec::with_capacity(dims.len());
    for ((&count, &k), &s) in dims.iter().zip(taps).zip(strides) {
        if count == 0 {
            return Err(Error::InvalidParameter {
                parameter: "grid",
                value: format!("{dims:?}"),
                reason: "every side of the grid needs at least one position",
            });
        }
        if k == 0 {
            return Err(Error::InvalidParameter {
                parameter: "taps",
                value: "0".into(),
                reason: "a filter or window needs at least one tap",
            });
        }
        if s == 0 {
            return Err(Error::InvalidParameter {
                parameter: "strides",
                value: "0".into(),
                reason: "a stride must be at least 1",
            });
        }
        let outputs = match padding {
            Padding::Valid if k <= count => (count - k) / s + 1,
            Padding::Valid => {
                return Err(Error::InvalidParameter {
                    parameter: "taps",
                    value: format!("{k} taps over {count} positions"),
                    reason: "a valid window needs at least as many positions as taps",
                });
            }
            Padding::Circular | Padding::Same => count.div_ceil(s),
        };
        counts.push(outputs);
    }
    // The windows hold Π outputs × Π taps positions: a filter too large to lay out is an
    // error, not an abort (checked before any window is built).
    let fits = |n: Option<usize>| {
        n.is_some_and(|n| {
            n <= isize::MAX as usize / 16
                && Vec::<Option<usize>>::new().try_reserve_exact(n).is_ok()
        })
    };
    let entries = counts
        .iter()
        .chain(taps)
        .try_fold(1_usize, |acc, &v| acc.checked_mul(v));
    let per_axis = counts
        .iter()
        .zip(taps)
        .all(|(&o, &k)| fits(o.checked_mul(k)));
    if !per_axis || !fits(entries) {
        return Err(Error::AllocationFailed {
            what: format!("the windows of a {dims:?} grid with {taps:?} taps"),
            size: format!("{counts:?} outputs × {taps:?} taps positions"),
        });
    }
    // Per axis: the input index of tap j at output q.
    let mut axes: Vec<AxisWindows> = Vec::with_capacity(dims.len());
    for (((&count, &k), &s), &outputs) in dims.iter().zip(taps).zip(strides).zip(&counts) {
        // TensorFlow's SAME split: ⌊total/2⌋ before, the rest after.
        let before = ((outputs - 1) * s + k).saturating_sub(count) / 2;
        let index = |q: usize, j: usize| -> Option<usize> {
            let at = (q * s + j) as i128 - before as i128;
            match padding {
                Padding::Valid => Some(q * s + j),
                Padding::Circular => Some(at.rem_euclid(count as i128) as usize),
                Padding::Same => (0..count as i128).contains(&at).then_some(at as usize),
            }
        };
        axes.push(
            (0..outputs)
                .map(|q| (0..k).map(|j| index(q, j)).collect())
                .collect(),
        );
    }
    Ok(axes)
}

/// The windows over a row-major grid of shape `dims` whose axes have the windows
/// `axes`: per output position (row-major), its positions row-major.
fn grid_windows(dims: &[usize], axes: &[AxisWindows]) -> Windows {
    let mut out: Vec<Vec<usize>> = vec![Vec::new()];
    for axis in axes {
        out = out
            .iter()
            .flat_map(|o| (0..axis.len()).map(move |q| [o.as_slice(), &[q]].concat()))
            .collect();
    }
    let shape = axes.iter().map(Vec::len).collect();
    let windows = out
        .iter()
        .map(|o| {
            let mut window: Vec<Option<usize>> = vec![Some(0)];
            for (axis, &q) in o.iter().enumerate() {
                let (dim, taps) = (dims[axis], &axes[axis][q]);
                window = window
                    .iter()
                    .flat_map(|&flat| {
                        taps.iter()
                            .map(move |&i| flat.zip(i).map(|(flat, i)| flat * dim + i))
                    })
                    .collect();
            }
            window
        })
        .collect();
    (windows, shape)
}

/// The windows over a row-major grid of shape `dims` of a filter of shape `taps` at
/// `strides` (see the [table at `Padding`](Padding)).
#[cfg(test)]
fn windows(dims: &[usize], taps: &[usize], strides: &[usize], padding: Padding) -> Result<Windows> {
    Ok(grid_windows(
        dims,
        &axis_windows(dims, taps, strides, padding)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The windows along one axis, as JAX pads them.
    fn axis(count: usize, k: usize, s: usize, padding: Padding) -> Vec<Vec<Option<usize>>> {
        windows(&[count], &[k], &[s], padding).unwrap().0
    }

    #[test]
    fn same_padding_splits_as_tensorflow() {
        // 5 positions, 3 taps: one zero before and after.
        let w = axis(5, 3, 1, Padding::Same);
        assert_eq!(w[0], vec![None, Some(0), Some(1)]);
        assert_eq!(w[4], vec![Some(3), Some(4), None]);
        // An even filter pads ⌊1/2⌋ = 0 before, 1 after.
        let w = axis(4, 2, 1, Padding::Same);
        assert_eq!(w[0], vec![Some(0), Some(1)]);
        assert_eq!(w[3], vec![Some(3), None]);
        // Stride 2 over 6 positions, 3 taps: 3 outputs, total padding 1 (0 before).
        let w = axis(6, 3, 2, Padding::Same);
        assert_eq!(
            w,
            vec![
                vec![Some(0), Some(1), Some(2)],
                vec![Some(2), Some(3), Some(4)],
                vec![Some(4), Some(5), None],
            ]
        );
        // Stride 2 over 5 positions, 3 taps: total padding 2, one before.
        assert_eq!(
            axis(5, 3, 2, Padding::Same)[0],
            vec![None, Some(0), Some(1)]
        );
    }

    #[test]
    fn valid_and_circular_windows() {
        assert_eq!(axis(5, 2, 2, Padding::Valid).len(), 2);
        assert_eq!(
            axis(4, 3, 1, Padding::Circular)[0],
            vec![Some(3), Some(0), Some(1)]
        );
        assert!(windows(&[2], &[3], &[1], Padding::Valid).is_err());
        assert!(windows(&[4], &[2], &[0], Padding::Same).is_err());
    }
}
