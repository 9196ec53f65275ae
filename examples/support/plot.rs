//! SVG line charts for the examples: linear or log axes, lines with markers and error
//! bars, dashed reference lines and horizontal lines across the whole chart.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Result;

/// How an axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Logarithmic, ticks at powers of 10.
    Log,
    /// Logarithmic, ticks at powers of 2 (for widths).
    Log2,
}

impl Scale {
    fn base(self) -> f64 {
        if self == Scale::Log2 { 2.0 } else { 10.0 }
    }
}

/// The geometry of a series.
#[derive(Clone, Debug)]
enum Shape {
    Points(Vec<(f64, f64)>),
    /// A constant y across the whole x range.
    Horizontal(f64),
}

/// One line of a chart, with its legend entry.
#[derive(Clone, Debug)]
pub struct Series {
    label: Option<String>,
    shape: Shape,
    color: RGBAColor,
    width: u32,
    dashed: bool,
    markers: bool,
    /// Vertical bars (x, low, high).
    error_bars: Vec<(f64, f64, f64)>,
}

impl Series {
    /// A solid line through `points`.
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>, color: impl Color) -> Self {
        Series {
            label: Some(label.into()),
            shape: Shape::Points(points),
            color: color.to_rgba(),
            width: 2,
            dashed: false,
            markers: false,
            error_bars: Vec::new(),
        }
    }

    /// A horizontal line at `y` across the chart.
    pub fn horizontal(label: impl Into<String>, y: f64, color: impl Color) -> Self {
        Series {
            shape: Shape::Horizontal(y),
            ..Series::line(label, Vec::new(), color)
        }
    }

    /// A circle at each point.
    pub fn markers(self) -> Self {
        Series {
            markers: true,
            ..self
        }
    }

    /// Dashed instead of solid.
    pub fn dashed(self) -> Self {
        Series {
            dashed: true,
            ..self
        }
    }

    /// Stroke width in pixels (default 2).
    pub fn width(self, width: u32) -> Self {
        Series { width, ..self }
    }

    /// Vertical error bars (x, low, high).
    pub fn error_bars(self, error_bars: Vec<(f64, f64, f64)>) -> Self {
        Series { error_bars, ..self }
    }

    /// Without a legend entry.
    pub fn unlabelled(self) -> Self {
        Series {
            label: None,
            ..self
        }
    }
}

/// A chart: title, axes and series, drawn into an SVG file or a panel of one.
pub struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    x_scale: Scale,
    y_scale: Scale,
    legend: SeriesLabelPosition,
    /// Extra space above the data, as a fraction of the y span (room for the legend).
    headroom: f64,
    series: Vec<Series>,
}

impl Chart {
    /// An empty chart with linear axes and the legend at the upper right.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            legend: SeriesLabelPosition::UpperRight,
            headroom: 0.0,
            series: Vec::new(),
        }
    }

    /// Sets the scales of the x and y axes.
    pub fn scales(self, x_scale: Scale, y_scale: Scale) -> Self {
        Chart {
            x_scale,
            y_scale,
            ..self
        }
    }

    /// Where the legend goes.
    pub fn legend(self, legend: SeriesLabelPosition) -> Self {
        Chart { legend, ..self }
    }

    /// Leaves `fraction` of the y span free above the data (room for the legend).
    pub fn headroom(self, headroom: f64) -> Self {
        Chart { headroom, ..self }
    }

    /// Adds a series (drawn in the order added).
    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Writes the chart to an SVG file of `size` pixels.
    pub fn save(&self, path: &Path, size: (u32, u32)) -> Result {
        let root = SVGBackend::new(path, size).into_drawing_area();
        self.draw(&root)?;
        root.present()
            .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
        Ok(())
    }

    /// Writes several charts, stacked top to bottom, to one SVG file; each panel is
    /// `size` pixels.
    pub fn save_stacked(charts: &[Chart], path: &Path, size: (u32, u32)) -> Result {
        let height = size.1 * charts.len() as u32;
        let root = SVGBackend::new(path, (size.0, height)).into_drawing_area();
        for (chart, panel) in charts.iter().zip(root.split_evenly((charts.len(), 1))) {
            chart.draw(&panel)?;
        }
        root.present()
            .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
        Ok(())
    }

    /// Draws the chart on `area` (a whole file, or one panel of `split_evenly`).
    pub fn draw(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result {
        area.fill(&WHITE)?;
        let (x, y) = self.ranges();
        let log_x = (x.0..x.1)
            .log_scale()
            .base(self.x_scale.base())
            .with_key_points(log_ticks(x, self.x_scale));
        let log_y = (y.0..y.1)
            .log_scale()
            .base(self.y_scale.base())
            .with_key_points(log_ticks(y, self.y_scale));
        match (self.x_scale == Scale::Linear, self.y_scale == Scale::Linear) {
            (true, true) => self.draw_in(area, x.0..x.1, y.0..y.1),
            (false, true) => self.draw_in(area, log_x, y.0..y.1),
            (true, false) => self.draw_in(area, x.0..x.1, log_y),
            (false, false) => self.draw_in(area, log_x, log_y),
        }
    }

    /// The padded data ranges of both axes (only positive values on a log axis).
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for s in &self.series {
            match &s.shape {
                Shape::Points(points) => {
                    xs.extend(points.iter().map(|p| p.0));
                    ys.extend(points.iter().map(|p| p.1));
                }
                Shape::Horizontal(y) => ys.push(*y),
            }
            for &(x, lo, hi) in &s.error_bars {
                xs.push(x);
                ys.extend([lo, hi]);
            }
        }
        let (lo, hi) = pad(&ys, self.y_scale);
        let hi = match self.y_scale {
            Scale::Linear => hi + self.headroom * (hi - lo),
            Scale::Log | Scale::Log2 => hi * (hi / lo).powf(self.headroom),
        };
        (pad(&xs, self.x_scale), (lo, hi))
    }

    fn draw_in<X, Y>(&self, area: &DrawingArea<SVGBackend<'_>, Shift>, x: X, y: Y) -> Result
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        let x_range = chart.x_range();
        let y_range = chart.y_range();
        for s in &self.series {
            let style = s.color.stroke_width(s.width);
            let points = match &s.shape {
                Shape::Points(points) => points.clone(),
                Shape::Horizontal(y) => vec![(x_range.start, *y), (x_range.end, *y)],
            };
            let drawn = if s.dashed {
                chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?
            } else {
                chart.draw_series(LineSeries::new(points.clone(), style))?
            };
            if let Some(label) = &s.label {
                drawn
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            if s.markers {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, s.color.filled())))?;
            }
            chart.draw_series(s.error_bars.iter().map(|&(x, lo, hi)| {
                PathElement::new(vec![(x, lo.max(y_range.start)), (x, hi)], s.color)
            }))?;
        }
        if self.series.iter().any(|s| s.label.is_some()) {
            chart
                .configure_series_labels()
                .position(self.legend.clone())
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    }
}

/// Ticks on a log axis over `lo..hi`: powers of 2 (`Log2`), or 1, 2, 5 (finer if
/// that gives fewer than three) times powers of 10, at most about a dozen.
fn log_ticks((lo, hi): (f64, f64), scale: Scale) -> Vec<f64> {
    let in_range = |step: f64, mantissas: &[f64]| -> Vec<f64> {
        let base = scale.base();
        let first = (lo.log(base).floor() as i32) - 1;
        let last = (hi.log(base).ceil() as i32) + 1;
        (first..=last)
            .step_by(step as usize)
            .flat_map(|e| mantissas.iter().map(move |m| m * base.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    if scale == Scale::Log2 {
        let all = in_range(1.0, &[1.0]);
        return if all.len() > 12 {
            in_range(2.0, &[1.0])
        } else {
            all
        };
    }
    for mantissas in [
        &[1.0][..],
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0],
    ] {
        let ticks = in_range(1.0, mantissas);
        if ticks.len() >= 3 {
            return if ticks.len() > 12 && mantissas.len() > 1 {
                in_range(1.0, &[1.0])
            } else {
                ticks
            };
        }
    }
    in_range(1.0, &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0])
}

/// A tick label: at most four decimals, without trailing zeros.
fn tick(value: &f64) -> String {
    let a = value.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        return format!("{value:.0e}");
    }
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The range of `values` with a margin: 5% of the span on a linear axis, a factor
/// on a log axis (where values ≤ 0 are left out).
fn pad(values: &[f64], scale: Scale) -> (f64, f64) {
    let usable = values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && (scale == Scale::Linear || *v > 0.0));
    let (lo, hi) = usable.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return match scale {
            Scale::Linear => (0.0, 1.0),
            Scale::Log | Scale::Log2 => (0.1, 10.0),
        };
    }
    match scale {
        Scale::Linear => {
            let margin = 0.05 * (hi - lo).max(1e-3 * hi.abs().max(1.0));
            (lo - margin, hi + margin)
        }
        Scale::Log | Scale::Log2 => {
            let factor = (hi / lo).powf(0.06).max(1.25);
            (lo / factor, hi * factor)
        }
    }
}

/// A grouped bar chart: one group of bars per category, one bar per series (a
/// missing value leaves a gap), the value written above each bar.
pub struct BarChart {
    title: String,
    y_label: String,
    categories: Vec<String>,
    /// (label, one value per category, colour).
    series: Vec<(String, Vec<Option<f64>>, RGBColor)>,
    /// The y axis, `(bottom, top)`; bars start at the bottom.
    y_range: (f64, f64),
    /// Decimals of the values written above the bars.
    decimals: usize,
    legend: SeriesLabelPosition,
}

impl BarChart {
    /// An empty chart over `categories` with the y axis `y_range` (bars rise from its
    /// bottom, which need not be 0: say so in `y_label`).
    pub fn new(
        title: impl Into<String>,
        y_label: impl Into<String>,
        categories: Vec<String>,
        y_range: (f64, f64),
    ) -> Self {
        BarChart {
            title: title.into(),
            y_label: y_label.into(),
            categories,
            series: Vec::new(),
            y_range,
            decimals: 3,
            legend: SeriesLabelPosition::UpperRight,
        }
    }

    /// Where the legend goes.
    pub fn legend(self, legend: SeriesLabelPosition) -> Self {
        BarChart { legend, ..self }
    }

    /// Adds one bar per category (`None`: no bar there).
    pub fn series(
        mut self,
        label: impl Into<String>,
        values: Vec<Option<f64>>,
        color: RGBColor,
    ) -> Self {
        self.series.push((label.into(), values, color));
        self
    }

    /// Writes the chart to an SVG file of `size` pixels.
    pub fn save(&self, path: &Path, size: (u32, u32)) -> Result {
        if self
            .series
            .iter()
            .any(|s| s.1.len() != self.categories.len())
        {
            return Err("a bar series needs one value per category".into());
        }
        let root = SVGBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE)?;
        let groups = self.categories.len() as f64;
        let (bottom, top) = self.y_range;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..groups, bottom..top)?;
        let categories = &self.categories;
        let category = |x: &f64| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-9 && i < categories.len() {
                categories[i].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .y_desc(self.y_label.as_str())
            .x_labels(2 * self.categories.len() + 1)
            .x_label_formatter(&category)
            .y_label_formatter(&tick)
            .y_labels(8)
            .disable_x_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        let width = 0.8 / self.series.len().max(1) as f64;
        for (k, (label, values, color)) in self.series.iter().enumerate() {
            let left = |i: usize| i as f64 + 0.1 + k as f64 * width;
            let bars = values.iter().enumerate().filter_map(|(i, v)| {
                v.map(|v| {
                    Rectangle::new(
                        [
                            (left(i) + 0.01, bottom),
                            (left(i) + width - 0.01, v.min(top)),
                        ],
                        color.filled(),
                    )
                })
            });
            let color = *color;
            chart
                .draw_series(bars)?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
            let decimals = self.decimals;
            let above = TextStyle::from(("sans-serif", 13).into_font())
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
                v.map(|v| {
                    Text::new(
                        format!("{v:.decimals$}"),
                        (left(i) + 0.5 * width, v.min(top) + 0.005 * (top - bottom)),
                        above.clone(),
                    )
                })
            }))?;
        }
        chart
            .configure_series_labels()
            .position(self.legend.clone())
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()
            .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
        Ok(())
    }
}
