//! Perplexity against bits/weight for every method, shrink's and the peers', as one PNG.
//!
//! One marker shape and colour per source (shrink's filled, larger, drawn last), both axes on
//! a log scale, perplexity capped at [`PPL_AXIS_MAX`] (points above it sit as ▲ on the top
//! edge and are listed beside the chart), a dashed line at the float baseline, and labels for
//! shrink's points and each peer's Pareto front, placed so that they do not overlap.

use std::path::Path;

use plotters::coord::cartesian::Cartesian2d;
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{EvalError, Result};

/// The source of shrink's own measurements; its points are emphasised.
pub const SHRINK: &str = "shrink";
/// The source of the unquantized references (f32, bf16, fp16); the baseline is its widest point.
pub const BASE: &str = "base";
/// Default image size in pixels (width, height).
pub const SIZE: (u32, u32) = (1600, 1000);
/// Highest perplexity on the axis; points above it are listed beside the chart instead.
pub const PPL_AXIS_MAX: f64 = 300.0;
/// Smallest image that leaves room for the plot and the legend column.
pub const MIN_SIZE: (u32, u32) = (640, 400);

/// Width of the legend column at the right, in pixels.
const SIDE_W: u32 = 400;
/// Candidate ticks of the bits/weight axis (thinned to those that fit).
const X_TICKS: [f64; 18] = [
    1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0,
    128.0,
];
/// The lower (zoomed) panel of a broken perplexity axis spans the lowest point to this many
/// times it; the upper panel takes the rest up to [`PPL_AXIS_MAX`].
const ZOOM_RATIO: f64 = 1.8;
/// Share of the plot's height given to the upper panel of a broken axis.
const UPPER_SHARE: f64 = 0.3;
/// Pixels for the tick labels left of the axis and below it.
const Y_LABEL_AREA: u32 = 72;
/// See [`Y_LABEL_AREA`].
const X_LABEL_AREA: u32 = 60;
/// Label text size (peers; shrink's are bold).
const LABEL_PX: u32 = 14;

/// Fonts tried for text, as in [`crate::plot`]; the bold face is optional.
const FONT_DIRS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/dejavu",
];

/// One measured method: where it sits on the chart and who measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartPoint {
    /// Method name shown beside the marker (e.g. `nf4-dq`, `llama.cpp-Q4_K_M`).
    pub label: String,
    /// Stored bits per weight of the quantized tensors (scales and zeros included).
    pub bits_per_weight: f64,
    /// Perplexity.
    pub ppl: f64,
    /// Who measured it: [`SHRINK`], [`BASE`] or the peer tool (`llama.cpp`, `hqq`, ...).
    pub source: String,
}

/// What the horizontal axis shows. With [`XAxis::Sparsity`] a point's `bits_per_weight` field
/// holds its density, 1 − sparsity (the fraction of weights kept), so that, as with bits,
/// less is to the left and smaller, the dense baseline sits rightmost, and the Pareto fronts
/// mean "no lower perplexity at the same or higher sparsity"; the ticks name the sparsity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XAxis {
    /// Stored bits per weight (the default).
    #[default]
    BitsPerWeight,
    /// Fraction of exact zeros of the weights (drawn as density, labelled as sparsity).
    Sparsity,
    /// Bits per weight of the whole model: every tensor's bytes over every weight (column
    /// `model_bits_per_weight`), embedding and head included.
    ModelBitsPerWeight,
}

impl XAxis {
    /// The CSV column holding the value (`bits_per_weight`, `sparsity`).
    pub fn column(self) -> &'static str {
        match self {
            XAxis::BitsPerWeight => "bits_per_weight",
            XAxis::Sparsity => "sparsity",
            XAxis::ModelBitsPerWeight => "model_bits_per_weight",
        }
    }

    /// The axis named by `--x` (`bits`, `bits_per_weight`, `sparsity`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bits" | "bits_per_weight" | "bpw" => Some(XAxis::BitsPerWeight),
            "sparsity" => Some(XAxis::Sparsity),
            "model-bits" | "model_bits_per_weight" => Some(XAxis::ModelBitsPerWeight),
            _ => None,
        }
    }

    /// The value shown for a point's x (`bits_per_weight`, or the sparsity from the density).
    pub fn shown(self, x: f64) -> f64 {
        match self {
            XAxis::BitsPerWeight | XAxis::ModelBitsPerWeight => x,
            XAxis::Sparsity => 1.0 - x,
        }
    }

    /// Candidate ticks with their tiers.
    fn candidates(self) -> Vec<(u8, f64)> {
        match self {
            XAxis::BitsPerWeight | XAxis::ModelBitsPerWeight => x_candidates(),
            XAxis::Sparsity => SPARSITY_TICKS
                .iter()
                .map(|&(t, s)| (t, 1.0 - s / 100.0))
                .collect(),
        }
    }

    /// A tick's text.
    fn tick(self, v: f64) -> String {
        match self {
            XAxis::BitsPerWeight | XAxis::ModelBitsPerWeight => tick_label(v),
            XAxis::Sparsity => format!(
                "{} %",
                tick_label((100.0 * (1.0 - v) * 10.0).round() / 10.0)
            ),
        }
    }

    /// The axis description.
    fn desc(self) -> &'static str {
        match self {
            XAxis::BitsPerWeight => {
                "bits/weight of the quantized tensors, scales and zeros included (log scale)"
            }
            XAxis::ModelBitsPerWeight => {
                "bits/weight of the whole model: every tensor's bytes over every weight (log scale)"
            }
            XAxis::Sparsity => {
                "sparsity: share of weights that are zero (log scale of 1 − sparsity)"
            }
        }
    }

    /// The range the points span, padded, as the log axis takes it.
    fn range(self, lo: f64, hi: f64) -> (f64, f64) {
        match self {
            XAxis::BitsPerWeight | XAxis::ModelBitsPerWeight => {
                ((lo / 1.15).min(2.0), (hi * 1.2).max(36.0))
            }
            XAxis::Sparsity => ((lo / 1.15).min(0.45), (hi * 1.1).max(1.05)),
        }
    }
}

/// Candidate sparsity ticks in percent, with their tiers.
const SPARSITY_TICKS: [(u8, f64); 12] = [
    (0, 0.0),
    (1, 25.0),
    (0, 50.0),
    (2, 60.0),
    (2, 70.0),
    (0, 75.0),
    (2, 80.0),
    (1, 87.5),
    (0, 90.0),
    (1, 95.0),
    (2, 98.0),
    (1, 99.0),
];

/// Register DejaVu Sans (normal, and bold when present) as "sans-serif": (normal, bold) found.
fn fonts() -> (bool, bool) {
    static FOUND: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let register = |file: &str, style: FontStyle| {
            FONT_DIRS
                .iter()
                .any(|d| match std::fs::read(Path::new(d).join(file)) {
                    Ok(bytes) => {
                        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                        plotters::style::register_font("sans-serif", style, bytes).is_ok()
                    }
                    Err(_) => false,
                })
        };
        let normal = register("DejaVuSans.ttf", FontStyle::Normal);
        let bold = normal && register("DejaVuSans-Bold.ttf", FontStyle::Bold);
        (normal, bold)
    })
}

/// Whether `q` is at least as good as `p` on both axes and better on one.
fn dominates(q: &ChartPoint, p: &ChartPoint) -> bool {
    (q.bits_per_weight <= p.bits_per_weight && q.ppl < p.ppl)
        || (q.bits_per_weight < p.bits_per_weight && q.ppl <= p.ppl)
}

/// Which points get a label: all of shrink's, and each other source's Pareto front (no point of
/// the same source has a lower perplexity at the same or fewer bits/weight).
pub fn labelled(points: &[ChartPoint]) -> Vec<bool> {
    points
        .iter()
        .map(|p| {
            p.source == SHRINK
                || !points
                    .iter()
                    .any(|q| q.source == p.source && dominates(q, p))
        })
        .collect()
}

/// The baseline drawn as a dashed line: the [`BASE`] point with the most bits/weight (f32).
pub fn baseline(points: &[ChartPoint]) -> Option<&ChartPoint> {
    points
        .iter()
        .filter(|p| p.source == BASE)
        .fold(None, |best: Option<&ChartPoint>, p| match best {
            Some(b) if b.bits_per_weight >= p.bits_per_weight => Some(b),
            _ => Some(p),
        })
}

/// Points above [`PPL_AXIS_MAX`], listed beside the chart instead of plotted.
pub fn off_chart(points: &[ChartPoint]) -> Vec<&ChartPoint> {
    points.iter().filter(|p| p.ppl > PPL_AXIS_MAX).collect()
}

/// Perplexity against bits/weight as a PNG of [`SIZE`] (see the module docs).
pub fn ppl_vs_bits(points: &[ChartPoint], path: &Path, title: &str) -> Result<()> {
    ppl_vs_bits_sized(points, path, title, SIZE)
}

/// [`ppl_vs_bits`] at a chosen size; written to a temporary name beside `path`, then renamed.
pub fn ppl_vs_bits_sized(
    points: &[ChartPoint],
    path: &Path,
    title: &str,
    size: (u32, u32),
) -> Result<()> {
    ppl_vs_x_sized(points, path, title, size, XAxis::BitsPerWeight)
}

/// Perplexity against `axis` ([`XAxis`] says what the points' x holds) at a chosen size.
pub fn ppl_vs_x_sized(
    points: &[ChartPoint],
    path: &Path,
    title: &str,
    size: (u32, u32),
    axis: XAxis,
) -> Result<()> {
    let input = |m: String| EvalError::Input(format!("{}: {m}", path.display()));
    if points.is_empty() {
        return Err(input("no points to chart".into()));
    }
    if let Some(p) = points.iter().find(|p| {
        let good = |v: f64| v.is_finite() && v > 0.0;
        !(good(p.bits_per_weight) && good(p.ppl))
    }) {
        return Err(input(format!(
            "point `{}` ({}): {} {} and perplexity {} must be finite and positive{}",
            p.label,
            p.source,
            axis.column(),
            axis.shown(p.bits_per_weight),
            p.ppl,
            if axis == XAxis::Sparsity {
                " (sparsity below 1)"
            } else {
                ""
            }
        )));
    }
    if size.0 < MIN_SIZE.0 || size.1 < MIN_SIZE.1 {
        return Err(input(format!(
            "image size {}x{} is below the minimum {}x{}",
            size.0, size.1, MIN_SIZE.0, MIN_SIZE.1
        )));
    }
    // The bitmap encoder picks the format from the extension: the temporary keeps `.png`.
    let tmp = shrink_io::output::Partial::with_extension(path, ".png")?;
    draw(points, tmp.path(), path, title, size, axis)?;
    tmp.commit()?;
    Ok(())
}

/// How a source's points look.
#[derive(Clone, Copy)]
struct Look {
    color: RGBColor,
    shape: Shape,
    filled: bool,
    radius: i32,
}

/// Marker shapes, cycled through the peers.
#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    Up,
    Down,
    Diamond,
    Cross,
    Plus,
}

/// shrink's look: filled red circles, outlined in black, larger than the peers'.
const SHRINK_LOOK: Look = Look {
    color: RGBColor(214, 39, 40),
    shape: Shape::Circle,
    filled: true,
    radius: 6,
};
/// The base's look: black hollow diamonds.
const BASE_LOOK: Look = Look {
    color: RGBColor(0, 0, 0),
    shape: Shape::Diamond,
    filled: false,
    radius: 7,
};
/// Peer colours (tab10 without its red, plus two darker ones).
const PALETTE: [RGBColor; 11] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(57, 59, 121),
    RGBColor(99, 121, 57),
];
/// Peer shapes, cycled alongside the colours.
const SHAPES: [Shape; 7] = [
    Shape::Square,
    Shape::Up,
    Shape::Circle,
    Shape::Down,
    Shape::Diamond,
    Shape::Cross,
    Shape::Plus,
];

/// Sources in legend order (shrink first, peers as they first appear, base last) with looks.
fn looks(points: &[ChartPoint]) -> Vec<(String, Look)> {
    let mut out: Vec<(String, Look)> = Vec::new();
    if points.iter().any(|p| p.source == SHRINK) {
        out.push((SHRINK.into(), SHRINK_LOOK));
    }
    let mut k = 0;
    for p in points {
        if p.source != SHRINK && p.source != BASE && !out.iter().any(|(s, _)| *s == p.source) {
            let look = Look {
                color: PALETTE[k % PALETTE.len()],
                shape: SHAPES[k % SHAPES.len()],
                filled: false,
                radius: 6,
            };
            out.push((p.source.clone(), look));
            k += 1;
        }
    }
    if points.iter().any(|p| p.source == BASE) {
        out.push((BASE.into(), BASE_LOOK));
    }
    out
}

/// Ticks among `candidates` (value, tier) within `lo..=hi`: lower tiers first, each kept if it
/// is at least `gap` pixels from every tick kept so far on a log axis of `len` pixels.
fn ticks(candidates: &[(u8, f64)], lo: f64, hi: f64, len: f64, gap: f64) -> Vec<f64> {
    let span = (hi / lo).ln();
    let px = |v: f64| (v / lo).ln() / span * len;
    let mut order: Vec<(u8, f64)> = candidates
        .iter()
        .copied()
        .filter(|&(_, v)| v >= lo && v <= hi)
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut out: Vec<f64> = Vec::new();
    for (_, v) in order {
        if out.iter().all(|&t| (px(t) - px(v)).abs() >= gap) {
            out.push(v);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Candidate bits/weight ticks with their tiers: powers of two first.
fn x_candidates() -> Vec<(u8, f64)> {
    let tier = |v: f64| match v {
        _ if v.log2().fract() == 0.0 => 0,
        _ if (v / 3.0).log2().fract() == 0.0 => 1,
        _ => 2,
    };
    X_TICKS.iter().map(|&v| (tier(v), v)).collect()
}

/// Candidate perplexity ticks over the decades of `lo..hi`, one per tenth of a decade's unit,
/// tiered by roundness (1, 2, 3, 5 first; then 1.5, 2.5, 4, 7; then halves, fifths, tenths).
fn y_candidates(lo: f64, hi: f64) -> Vec<(u8, f64)> {
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    (d0..=d1)
        .flat_map(|d| {
            (10..100u32).map(move |k| {
                let tier = match k {
                    10 | 20 | 30 | 50 => 0,
                    15 | 25 | 40 | 70 => 1,
                    _ if k % 5 == 0 => 2,
                    _ if k % 2 == 0 => 3,
                    _ => 4,
                };
                // k / 10 × 10^d, rounded so that 3 × 10 prints as 30.
                let v = f64::from(k) * 10f64.powi(d - 1);
                (tier, (v * 1e6).round() / 1e6)
            })
        })
        .collect()
}

/// Where the perplexity axis breaks in two: the first round value at or above
/// [`ZOOM_RATIO`] × the lowest point, when the axis goes on to at least twice that. Below the
/// break the chart zooms in on the methods close to the baseline.
fn break_at(lo: f64, hi: f64) -> Option<f64> {
    let floor = lo * ZOOM_RATIO;
    let m = y_candidates(floor, hi)
        .into_iter()
        .filter(|&(t, v)| t <= 1 && v >= floor)
        .map(|(_, v)| v)
        .min_by(f64::total_cmp)?;
    (hi >= 2.0 * m).then_some(m)
}

/// A tick value without trailing zeros (30, 2.5).
fn tick_label(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// An axis-aligned pixel box.
#[derive(Clone, Copy)]
struct Boxed {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Boxed {
    /// Whether two boxes overlap (touching edges do not).
    fn hits(&self, o: &Boxed) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
    /// Whether this box lies inside `o`.
    fn inside(&self, o: &Boxed) -> bool {
        self.x0 >= o.x0 && self.x1 <= o.x1 && self.y0 >= o.y0 && self.y1 <= o.y1
    }
}

/// The drawing area every pixel-space element goes on (the whole image).
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draw one marker centred at pixel `c`.
fn marker(area: &Area, look: Look, c: (i32, i32)) -> std::result::Result<(), String> {
    let (x, y) = c;
    let r = look.radius;
    let stroke = look.color.stroke_width(2);
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let outline = |pts: Vec<(i32, i32)>| -> std::result::Result<(), String> {
        if look.filled {
            area.draw(&Polygon::new(pts.clone(), look.color.filled()))
                .map_err(e)?;
            let mut closed = pts;
            closed.push(closed[0]);
            area.draw(&PathElement::new(closed, BLACK.stroke_width(1)))
                .map_err(e)
        } else {
            let mut closed = pts;
            closed.push(closed[0]);
            area.draw(&PathElement::new(closed, stroke)).map_err(e)
        }
    };
    match look.shape {
        Shape::Circle => {
            if look.filled {
                area.draw(&Circle::new((x, y), r, look.color.filled()))
                    .map_err(e)?;
                area.draw(&Circle::new((x, y), r, BLACK.stroke_width(1)))
                    .map_err(e)
            } else {
                area.draw(&Circle::new((x, y), r, stroke)).map_err(e)
            }
        }
        Shape::Square => {
            let s = r - 1;
            outline(vec![
                (x - s, y - s),
                (x + s, y - s),
                (x + s, y + s),
                (x - s, y + s),
            ])
        }
        Shape::Up => outline(vec![(x, y - r - 1), (x + r, y + r - 2), (x - r, y + r - 2)]),
        Shape::Down => outline(vec![(x, y + r + 1), (x + r, y - r + 2), (x - r, y - r + 2)]),
        Shape::Diamond => outline(vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y)]),
        Shape::Cross => {
            let s = r - 1;
            area.draw(&PathElement::new(
                vec![(x - s, y - s), (x + s, y + s)],
                stroke,
            ))
            .map_err(e)?;
            area.draw(&PathElement::new(
                vec![(x - s, y + s), (x + s, y - s)],
                stroke,
            ))
            .map_err(e)
        }
        Shape::Plus => {
            area.draw(&PathElement::new(vec![(x - r, y), (x + r, y)], stroke))
                .map_err(e)?;
            area.draw(&PathElement::new(vec![(x, y - r), (x, y + r)], stroke))
                .map_err(e)
        }
    }
}

/// Split `text` into lines no wider than `width` pixels.
fn wrap(area: &Area, text: &str, style: &TextStyle, width: u32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let candidate = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        let w = area
            .estimate_text_size(&candidate, style)
            .map_or(0, |(w, _)| w);
        if w > width && !line.is_empty() {
            lines.push(std::mem::replace(&mut line, word.to_string()));
        } else {
            line = candidate;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// One of the log axes: key points bound to a log range.
type Axis = WithKeyPoints<LogCoord<f64>>;
/// A chart on the image: bits/weight across, perplexity up.
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<Axis, Axis>>;

/// Which edges of the plot a panel sits on (the x axis goes on the bottom one).
#[derive(Clone, Copy, PartialEq)]
enum Edge {
    Top,
    Bottom,
    Both,
}

/// One perplexity range of the chart (two when the axis is broken) and its pixel frame.
struct Panel<'a, 'b> {
    chart: Chart<'a, 'b>,
    lo: f64,
    hi: f64,
    frame: Boxed,
}

/// Build a panel with its grid and tick labels over `x` × `y` (both log scale).
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    x: (f64, f64),
    y: (f64, f64),
    text: bool,
    edge: Edge,
    axis: XAxis,
) -> std::result::Result<Panel<'a, 'b>, String> {
    let bottom = edge != Edge::Top;
    let (w, h) = area.dim_in_pixel();
    let mut b = ChartBuilder::on(area);
    b.margin_left(12)
        .margin_right(24)
        .margin_top(if edge == Edge::Bottom { 6 } else { 12 })
        .margin_bottom(if bottom { 12 } else { 6 });
    if text {
        b.y_label_area_size(Y_LABEL_AREA);
        if bottom {
            b.x_label_area_size(X_LABEL_AREA);
        }
    }
    let len_x = f64::from(w.saturating_sub(Y_LABEL_AREA + 36));
    let len_y = f64::from(h.saturating_sub(if bottom { X_LABEL_AREA + 18 } else { 18 }));
    let xs = ticks(&axis.candidates(), x.0, x.1, len_x, 40.0);
    let mut ys = ticks(&y_candidates(y.0, y.1), y.0, y.1, len_y, 30.0);
    if edge == Edge::Bottom {
        // The break value is already labelled at the foot of the upper panel.
        ys.retain(|&v| v < y.1);
    }
    let mut chart = b
        .build_cartesian_2d(
            (x.0..x.1).log_scale().with_key_points(xs),
            (y.0..y.1).log_scale().with_key_points(ys),
        )
        .map_err(|e| e.to_string())?;
    if text {
        let x_fmt = |v: &f64| axis.tick(*v);
        let mut mesh = chart.configure_mesh();
        mesh.bold_line_style(BLACK.mix(0.1))
            .axis_style(BLACK.mix(0.7))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|v| tick_label(*v));
        if bottom {
            mesh.x_desc(axis.desc()).y_desc("perplexity (log scale)");
        }
        mesh.draw().map_err(|e| e.to_string())?;
    }
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let frame = Boxed {
        x0: xr.start,
        y0: yr.start,
        x1: xr.end,
        y1: yr.end,
    };
    Ok(Panel {
        chart,
        lo: y.0,
        hi: y.1,
        frame,
    })
}

/// The axes' ranges: x spans every point (at least 2..36 bits), y the points under the cap.
fn ranges(points: &[ChartPoint], axis: XAxis) -> ((f64, f64), (f64, f64)) {
    let on: Vec<&ChartPoint> = points.iter().filter(|p| p.ppl <= PPL_AXIS_MAX).collect();
    let off = off_chart(points);
    let fold = |it: &mut dyn Iterator<Item = f64>| {
        it.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        })
    };
    let (b_lo, b_hi) = fold(&mut points.iter().map(|p| p.bits_per_weight));
    let x = axis.range(b_lo, b_hi);
    let (p_lo, p_hi) = fold(&mut on.iter().map(|p| p.ppl));
    let y = if on.is_empty() {
        (PPL_AXIS_MAX / 10.0, PPL_AXIS_MAX)
    } else if !off.is_empty() {
        (p_lo / 1.04, PPL_AXIS_MAX)
    } else {
        (p_lo / 1.04, (p_hi * 1.15).max(p_lo * 1.5).min(PPL_AXIS_MAX))
    };
    (x, y)
}

/// Break marks across the left and right edges of the gap between two panels.
fn break_marks(root: &Area, frame: Boxed, frames: &[Boxed]) -> std::result::Result<(), String> {
    for (x, y) in [
        (frame.x0, frames[0].y1),
        (frame.x0, frames[1].y0),
        (frame.x1, frames[0].y1),
        (frame.x1, frames[1].y0),
    ] {
        root.draw(&PathElement::new(
            vec![(x - 7, y + 4), (x + 7, y - 4)],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The baseline's own label, at the left end of its line (pixel row `y`); the label and the
/// line itself are added to `taken`.
fn baseline_label(
    root: &Area,
    b: &ChartPoint,
    y: i32,
    frame: Boxed,
    taken: &mut Vec<Boxed>,
) -> std::result::Result<(), String> {
    let de = |e: DrawingAreaErrorKind<_>| e.to_string();
    let style = TextStyle::from(("sans-serif", 14)).color(&RGBColor(64, 64, 64));
    let label = format!("{} baseline: PPL {:.2}", b.label, b.ppl);
    let (tw, th) = root.estimate_text_size(&label, &style).map_err(de)?;
    let (x0, y0) = (frame.x0 + 8, y - th as i32 - 4);
    root.draw_text(&label, &style, (x0, y0)).map_err(de)?;
    taken.push(Boxed {
        x0,
        y0,
        x1: x0 + tw as i32,
        y1: y0 + th as i32,
    });
    // Keep other labels off the dashed line itself.
    taken.push(Boxed {
        x0: frame.x0,
        y0: y - 2,
        x1: frame.x1,
        y1: y + 2,
    });
    Ok(())
}

/// Where the point labels may go: inside the panels' frames, below `y_hi`.
struct Labels<'f> {
    frames: &'f [Boxed],
    bold: bool,
    y_hi: f64,
}

impl Labels<'_> {
    /// Draw the labels of shrink's points and each peer's Pareto front, clear of `taken`.
    fn place(
        &self,
        root: &Area,
        points: &[ChartPoint],
        at: &dyn Fn(&ChartPoint) -> (i32, i32),
        look_of: &dyn Fn(&str) -> Look,
        taken: &mut Vec<Boxed>,
    ) -> std::result::Result<(), String> {
        let de = |e: DrawingAreaErrorKind<_>| e.to_string();
        let (frames, bold, y_hi) = (self.frames, self.bold, self.y_hi);
        // Labels: shrink's first, then the peers' fronts, each from the lowest perplexity up; each
        // goes to the nearest free spot right or left of its marker, with a leader line if moved.
        let marks = labelled(points);
        let mut queue: Vec<&ChartPoint> = points
            .iter()
            .zip(&marks)
            .filter(|(p, m)| **m && p.ppl <= y_hi)
            .map(|(p, _)| p)
            .collect();
        queue.sort_by(|a, b| {
            (a.source != SHRINK)
                .cmp(&(b.source != SHRINK))
                .then(a.ppl.total_cmp(&b.ppl))
        });
        for p in queue {
            let shrink = p.source == SHRINK;
            let style = if shrink {
                let face = if bold {
                    FontStyle::Bold
                } else {
                    FontStyle::Normal
                };
                TextStyle::from(("sans-serif", LABEL_PX, face)).color(&RGBColor(160, 20, 20))
            } else {
                TextStyle::from(("sans-serif", LABEL_PX - 1)).color(&RGBColor(51, 51, 51))
            };
            let (tw, th) = root.estimate_text_size(&p.label, &style).map_err(de)?;
            let (tw, th) = (tw as i32, th as i32);
            let (x, y) = at(p);
            let r = look_of(&p.source).radius + 4;
            let step = th / 2 + 1;
            let spot = (0..=40).find_map(|k| {
                let dys: &[i32] = if k == 0 { &[0] } else { &[-k, k] };
                dys.iter().find_map(|&d| {
                    let dy = d * step;
                    [x + r, x - r - tw].into_iter().find_map(|x0| {
                        let bx = Boxed {
                            x0: x0 - 2,
                            y0: y + dy - th / 2 - 1,
                            x1: x0 + tw + 2,
                            y1: y + dy + th / 2 + 1,
                        };
                        (frames.iter().any(|f| bx.inside(f)) && !taken.iter().any(|t| t.hits(&bx)))
                            .then_some((bx, dy))
                    })
                })
            });
            let Some((bx, dy)) = spot else { continue };
            if dy.abs() > th / 2 {
                let (lx, ly) = if bx.x0 > x {
                    (bx.x0, y + dy)
                } else {
                    (bx.x1, y + dy)
                };
                root.draw(&PathElement::new(
                    vec![(x, y), (lx, ly)],
                    BLACK.mix(0.3).stroke_width(1),
                ))
                .map_err(de)?;
            }
            root.draw_text(&p.label, &style, (bx.x0 + 2, bx.y0 + 1))
                .map_err(de)?;
            taken.push(bx);
        }
        Ok(())
    }
}

/// The legend column at `at`, `width` pixels wide: sources, baseline, what is labelled, what
/// is off the chart.
#[allow(clippy::too_many_arguments)]
fn legend(
    root: &Area,
    at: (i32, i32),
    width: u32,
    points: &[ChartPoint],
    looks: &[(String, Look)],
    base: Option<&ChartPoint>,
    off: &[&ChartPoint],
    bold: bool,
    axis: XAxis,
) -> std::result::Result<(), String> {
    let de = |e: DrawingAreaErrorKind<_>| e.to_string();
    let head = TextStyle::from((
        "sans-serif",
        16,
        if bold {
            FontStyle::Bold
        } else {
            FontStyle::Normal
        },
    ));
    let body = TextStyle::from(("sans-serif", 14));
    let small = TextStyle::from(("sans-serif", 13)).color(&RGBColor(38, 38, 38));
    let (lx, mut y) = at;
    root.draw_text("Source (points)", &head, (lx, y))
        .map_err(de)?;
    y += 26;
    for (name, look) in looks {
        let n = points.iter().filter(|p| p.source == *name).count();
        marker(root, *look, (lx + 10, y + 8))?;
        root.draw_text(&format!("{name} ({n})"), &body, (lx + 28, y))
            .map_err(de)?;
        y += 22;
    }
    y += 10;
    if let Some(b) = base {
        root.draw(&PathElement::new(
            vec![(lx, y + 8), (lx + 22, y + 8)],
            BLACK.mix(0.55).stroke_width(2),
        ))
        .map_err(de)?;
        let s = format!("{} baseline, PPL {:.4}", b.label, b.ppl);
        root.draw_text(&s, &body, (lx + 28, y)).map_err(de)?;
        y += 30;
    }
    let note = match axis {
        XAxis::BitsPerWeight | XAxis::ModelBitsPerWeight => {
            "Labelled: every shrink point; for each peer, its Pareto front \
             (no lower perplexity at the same or fewer bits/weight)."
        }
        XAxis::Sparsity => {
            "Labelled: every shrink point; for each peer, its Pareto front \
             (no lower perplexity at the same or higher sparsity)."
        }
    };
    for line in wrap(root, note, &small, width) {
        root.draw_text(&line, &small, (lx, y)).map_err(de)?;
        y += 17;
    }
    if !off.is_empty() {
        y += 14;
        let s = format!("Off the chart (PPL > {PPL_AXIS_MAX}), ▲ on the top edge:");
        for line in wrap(root, &s, &body, width) {
            root.draw_text(&line, &body, (lx, y)).map_err(de)?;
            y += 19;
        }
        let mut off = off.to_vec();
        off.sort_by(|a, b| {
            a.bits_per_weight
                .total_cmp(&b.bits_per_weight)
                .then(a.ppl.total_cmp(&b.ppl))
        });
        for p in off {
            let s = format!(
                "{} ({}): {:.2} bits, PPL {:.0}",
                p.label, p.source, p.bits_per_weight, p.ppl
            );
            for (i, line) in wrap(root, &s, &small, width - 12).iter().enumerate() {
                let x = if i == 0 { lx + 6 } else { lx + 18 };
                root.draw_text(line, &small, (x, y)).map_err(de)?;
                y += 17;
            }
        }
    }
    Ok(())
}

/// Draw every point's marker (peers first, then the base, then shrink on top; ▲ on the top
/// edge above `y_hi`); returns the boxes they cover.
fn markers(
    root: &Area,
    points: &[ChartPoint],
    at: &dyn Fn(&ChartPoint) -> (i32, i32),
    look_of: &dyn Fn(&str) -> Look,
    y_hi: f64,
) -> std::result::Result<Vec<Boxed>, String> {
    // Peers first, then the base, then shrink on top.
    let rank = |p: &ChartPoint| match p.source.as_str() {
        SHRINK => 2,
        BASE => 1,
        _ => 0,
    };
    let mut order: Vec<&ChartPoint> = points.iter().collect();
    order.sort_by_key(|p| rank(p));
    let mut taken = Vec::new();
    for p in &order {
        let (x, y) = at(p);
        let mut look = look_of(&p.source);
        if p.ppl > y_hi {
            look = Look {
                shape: Shape::Up,
                filled: true,
                ..look
            };
        }
        marker(root, look, (x, y))?;
        let r = look.radius + 2;
        taken.push(Boxed {
            x0: x - r,
            y0: y - r,
            x1: x + r,
            y1: y + r,
        });
    }
    Ok(taken)
}

/// Render the chart into `tmp`; errors name `path`, the file the caller asked for.
fn draw(
    points: &[ChartPoint],
    tmp: &Path,
    path: &Path,
    title: &str,
    size: (u32, u32),
    axis: XAxis,
) -> Result<()> {
    let err = |e: String| EvalError::Input(format!("{}: cannot draw: {e}", path.display()));
    let de = |e: DrawingAreaErrorKind<_>| err(e.to_string());
    let (text, bold) = fonts();
    let looks = looks(points);
    let look_of = |s: &str| {
        looks
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, l)| *l)
            .unwrap_or(SHRINK_LOOK)
    };

    let off = off_chart(points);
    let ((x_lo, x_hi), (y_lo, y_hi)) = ranges(points, axis);

    let root = BitMapBackend::new(tmp, size).into_drawing_area();
    root.fill(&WHITE).map_err(de)?;
    let w = size.0;
    let side_w = if text { SIDE_W.min(w / 3) } else { 0 };
    let (left, _) = root.split_horizontally(w - side_w);
    let plot = if text {
        left.titled(title, ("sans-serif", 24)).map_err(de)?
    } else {
        left
    };
    // A broken axis: the upper panel (coarse) above the break, the lower (zoomed) below it.
    let brk = break_at(y_lo, y_hi);
    let ph = plot.dim_in_pixel().1;
    let upper_h = match brk {
        Some(_) => (f64::from(ph.saturating_sub(X_LABEL_AREA)) * UPPER_SHARE) as u32,
        None => 0,
    };
    let (up, down) = plot.split_vertically(upper_h);
    let mut panels = match brk {
        Some(m) => vec![
            panel(&up, (x_lo, x_hi), (m, y_hi), text, Edge::Top, axis).map_err(err)?,
            panel(&down, (x_lo, x_hi), (y_lo, m), text, Edge::Bottom, axis).map_err(err)?,
        ],
        None => {
            vec![panel(&plot, (x_lo, x_hi), (y_lo, y_hi), text, Edge::Both, axis).map_err(err)?]
        }
    };
    let base = baseline(points).filter(|b| b.ppl >= y_lo && b.ppl <= y_hi);
    if let Some(b) = base {
        if let Some(pn) = panels.iter_mut().find(|pn| b.ppl >= pn.lo) {
            pn.chart
                .draw_series(DashedLineSeries::new(
                    [(x_lo, b.ppl), (x_hi, b.ppl)],
                    10,
                    6,
                    BLACK.mix(0.55).stroke_width(2),
                ))
                .map_err(de)?;
        }
    }

    // Everything below is drawn in pixels on the whole image.
    let frames: Vec<Boxed> = panels.iter().map(|pn| pn.frame).collect();
    let frame = Boxed {
        y1: frames[frames.len() - 1].y1,
        ..frames[0]
    };
    if frames.len() > 1 {
        break_marks(&root, frame, &frames).map_err(err)?;
    }
    let at = |p: &ChartPoint| -> (i32, i32) {
        let top = &panels[0];
        if p.ppl > top.hi {
            let (x, _) = top.chart.backend_coord(&(p.bits_per_weight, top.hi));
            (x, top.frame.y0 + 8)
        } else {
            let pn = panels
                .iter()
                .find(|pn| p.ppl >= pn.lo)
                .unwrap_or(&panels[panels.len() - 1]);
            pn.chart.backend_coord(&(p.bits_per_weight, p.ppl))
        }
    };
    let mut taken = markers(&root, points, &at, &look_of, y_hi).map_err(err)?;
    if !text {
        root.present().map_err(de)?;
        return Ok(());
    }

    if let Some(b) = base {
        baseline_label(&root, b, at(b).1, frame, &mut taken).map_err(err)?;
    }

    let lab = Labels {
        frames: &frames,
        bold,
        y_hi,
    };
    lab.place(&root, points, &at, &look_of, &mut taken)
        .map_err(err)?;

    let legend_x = (w - side_w) as i32 + 8;
    legend(
        &root,
        (legend_x, frame.y0),
        side_w - 20,
        points,
        &looks,
        base,
        &off,
        bold,
        axis,
    )
    .map_err(err)?;
    root.present().map_err(de)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(label: &str, source: &str, bits: f64, ppl: f64) -> ChartPoint {
        ChartPoint {
            label: label.into(),
            bits_per_weight: bits,
            ppl,
            source: source.into(),
        }
    }

    #[test]
    fn labels_go_to_shrink_and_each_peers_front() {
        let pts = [
            pt("a", "peer", 4.0, 30.0),
            pt("b", "peer", 4.5, 31.0), // dominated by a
            pt("c", "peer", 8.0, 27.5),
            pt("d", "other", 8.0, 40.0), // alone in its source: on its front
            pt("e", SHRINK, 4.5, 50.0),  // shrink: always labelled
        ];
        assert_eq!(labelled(&pts), [true, false, true, true, true]);
    }

    #[test]
    fn baseline_is_the_widest_base_point() {
        let pts = [
            pt("bf16", BASE, 16.0, 27.305),
            pt("f32", BASE, 32.0, 27.3078),
            pt("q", "peer", 33.0, 20.0),
        ];
        assert_eq!(baseline(&pts).map(|p| p.label.as_str()), Some("f32"));
        assert!(baseline(&pts[2..]).is_none());
    }

    #[test]
    fn ticks_keep_their_distance() {
        let t = ticks(&y_candidates(26.0, 300.0), 26.0, 300.0, 800.0, 26.0);
        assert_eq!(t.first(), Some(&26.0));
        assert!(
            t.contains(&30.0) && t.contains(&100.0) && t.contains(&300.0),
            "{t:?}"
        );
        let px: Vec<f64> = t
            .iter()
            .map(|v| (v / 26.0).ln() / (300f64 / 26.0).ln() * 800.0)
            .collect();
        assert!(px.windows(2).all(|w| w[1] - w[0] >= 26.0));
        let x = ticks(&x_candidates(), 2.0, 36.0, 1000.0, 40.0);
        assert_eq!(x[..5], [2.0, 2.5, 3.0, 4.0, 5.0]);
        assert_eq!(break_at(26.25, 300.0), Some(50.0));
        assert_eq!(break_at(26.25, 60.0), None);
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(30.0), "30");
    }

    #[test]
    fn bad_points_are_refused_before_any_file() {
        let path = std::env::temp_dir().join(format!("shrink-chart-{}.png", std::process::id()));
        let e = ppl_vs_bits(&[pt("x", "peer", 4.0, f64::NAN)], &path, "t").unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
        assert!(ppl_vs_bits(&[], &path, "t").is_err());
        assert!(!path.exists());
    }
}
