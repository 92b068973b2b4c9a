//! Charts drawn by shrink itself (plotters, PNG): weight histograms, original vs compressed.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{EvalError, Result};

/// Fonts tried for labels; without one the chart is drawn without text.
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Series colours, in order.
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draw the legend (when labels can be drawn) and write the image.
fn finish<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
    labels: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Register a system sans-serif font for labels; false when none is found.
fn fonts() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        FONTS.iter().any(|p| match std::fs::read(p) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            Err(_) => false,
        })
    })
}

/// Overlaid histograms of several value sets (e.g. original and dequantized weights) as a PNG.
/// Returns whether labels could be drawn (a font was found).
pub fn histogram_png(
    path: &Path,
    title: &str,
    series: &[(&str, &[f32])],
    bins: usize,
) -> Result<bool> {
    let err = |e: String| EvalError::Input(format!("{}: cannot draw: {e}", path.display()));
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    if !lo.is_finite() || !hi.is_finite() || lo >= hi {
        return Err(err("no finite range to plot".into()));
    }
    let hists: Vec<Vec<u64>> = series
        .iter()
        .map(|(_, v)| crate::weights::histogram(v, lo, hi, bins))
        .collect();
    let ymax = hists.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let labels = fonts();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut b = ChartBuilder::on(&root);
    b.margin(20);
    if labels {
        b.caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d(lo as f64..hi as f64, 0f64..ymax * 1.05)
        .map_err(|e| err(e.to_string()))?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("weight value")
            .y_desc("count")
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    let w = (hi - lo) as f64 / bins as f64;
    for (k, ((name, _), h)) in series.iter().zip(&hists).enumerate() {
        let c = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> = h
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| {
                let x0 = lo as f64 + i as f64 * w;
                [(x0, n as f64), (x0 + w, n as f64)]
            })
            .collect();
        let s = chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?;
        if labels {
            s.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
            });
        }
    }
    finish(&mut chart, &root, labels).map_err(err)?;
    Ok(labels)
}

/// Training curves (one or more series of (step, value)) as a PNG line chart. Returns whether
/// labels could be drawn.
pub fn curves_png(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(&str, &[(f64, f64)])],
) -> Result<bool> {
    let err = |e: String| EvalError::Input(format!("{}: cannot draw: {e}", path.display()));
    let pts = || {
        series
            .iter()
            .flat_map(|(_, v)| v.iter())
            .filter(|p| p.1.is_finite())
    };
    let (x0, x1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| {
        (l.min(p.0), h.max(p.0))
    });
    let (y0, y1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| {
        (l.min(p.1), h.max(p.1))
    });
    if !(x0.is_finite() && y0.is_finite()) {
        return Err(err("no finite points to plot".into()));
    }
    let (x1, y1) = (x1.max(x0 + 1.0), y1.max(y0 * 1.01 + 1e-9));
    let labels = fonts();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut b = ChartBuilder::on(&root);
    b.margin(20);
    if labels {
        b.caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d(x0..x1, y0 * 0.98..y1 * 1.02)
        .map_err(|e| err(e.to_string()))?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    for (i, (name, v)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let s = chart
            .draw_series(LineSeries::new(
                v.iter().copied().filter(|p| p.1.is_finite()),
                c.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?;
        if labels {
            s.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    finish(&mut chart, &root, labels).map_err(err)?;
    Ok(labels)
}

/// One cell of [`grid_png`]: its row and column, the value that colours it and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    /// Row index (into the row labels).
    pub row: usize,
    /// Column index.
    pub col: usize,
    /// The value that picks the colour (within the chart's range).
    pub value: f64,
    /// Text drawn in the cell.
    pub text: String,
}

/// The colour of `v` on a red (low) – yellow – green (high) scale over `lo..hi`.
fn ramp(v: f64, lo: f64, hi: f64) -> RGBColor {
    let t = ((v - lo) / (hi - lo).max(f64::MIN_POSITIVE)).clamp(0.0, 1.0);
    let (r, g) = if t < 0.5 {
        (230.0, 60.0 + 2.0 * t * 170.0)
    } else {
        (230.0 - 2.0 * (t - 0.5) * 180.0, 230.0)
    };
    RGBColor(r as u8, g as u8, 70)
}

/// A grid of labelled cells coloured by their value on a red–green scale over `range` (e.g.
/// each tensor of a model by block and kind, coloured by bits/weight), with the scale beside it.
/// Returns whether labels could be drawn (a font was found).
pub fn grid_png(
    path: &Path,
    title: &str,
    row_labels: &[String],
    cols: usize,
    cells: &[GridCell],
    range: (f64, f64),
    unit: &str,
) -> Result<bool> {
    let err = |e: String| EvalError::Input(format!("{}: cannot draw: {e}", path.display()));
    if cols == 0 || row_labels.is_empty() {
        return Err(err("an empty grid".into()));
    }
    let labels = fonts();
    let (cw, ch, left, top) = (44i32, 34i32, 130i32, 60i32);
    let width = (left + cw * cols as i32 + 140) as u32;
    let height = (top + ch * row_labels.len() as i32 + 60) as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    let de = |e: DrawingAreaErrorKind<_>| err(e.to_string());
    root.fill(&WHITE).map_err(de)?;
    let font = |size: i32| ("sans-serif", size).into_font().color(&BLACK);
    if labels {
        root.draw_text(title, &font(18), (left, 15)).map_err(de)?;
        for (r, name) in row_labels.iter().enumerate() {
            let y = top + r as i32 * ch + ch / 2 - 6;
            root.draw_text(name, &font(13), (8, y)).map_err(de)?;
        }
        for c in (0..cols).step_by(if cols > 40 { 5 } else { 1 }) {
            let x = left + c as i32 * cw + cw / 2 - 6;
            let y = top + row_labels.len() as i32 * ch + 6;
            root.draw_text(&c.to_string(), &font(12), (x, y))
                .map_err(de)?;
        }
    }
    for cell in cells {
        let (x, y) = (left + cell.col as i32 * cw, top + cell.row as i32 * ch);
        let fill = ramp(cell.value, range.0, range.1);
        root.draw(&Rectangle::new(
            [(x, y), (x + cw - 2, y + ch - 2)],
            fill.filled(),
        ))
        .map_err(de)?;
        if labels {
            root.draw_text(&cell.text, &font(10), (x + 3, y + ch / 2 - 5))
                .map_err(de)?;
        }
    }
    // The scale.
    let sx = left + cw * cols as i32 + 30;
    for k in 0..=10 {
        let v = range.0 + (range.1 - range.0) * (10 - k) as f64 / 10.0;
        let y = top + k * 16;
        root.draw(&Rectangle::new(
            [(sx, y), (sx + 20, y + 15)],
            ramp(v, range.0, range.1).filled(),
        ))
        .map_err(de)?;
        if labels && k % 2 == 0 {
            root.draw_text(&format!("{v:.1}"), &font(12), (sx + 26, y + 1))
                .map_err(de)?;
        }
    }
    if labels {
        root.draw_text(unit, &font(12), (sx - 10, top - 20))
            .map_err(de)?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(labels)
}
