//! The results CSV behind [`crate::chart`] (`shrink chart`): one row per measured method,
//! read with the file and line of the first bad row, filtered to one number of windows and
//! drawn.
//!
//! The header names at least `label,source,bits_per_weight,ppl,windows` (with `sparsity` in
//! place of `bits_per_weight` for a chart against sparsity, [`XAxis::Sparsity`]); other columns
//! (e.g. `command`) are carried for the reader. Fields follow RFC 4180 (quoted fields, `""` escapes,
//! quoted newlines).

use std::path::{Path, PathBuf};

use crate::chart::{self, ChartPoint, XAxis};
use crate::error::{EvalError, Result};

/// The columns read; others are ignored.
pub const COLUMNS: [&str; 5] = ["label", "source", "bits_per_weight", "ppl", "windows"];

/// One data row: the point and the windows it was scored on.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The measured method.
    pub point: ChartPoint,
    /// Windows of lee-ppl-v1 its perplexity was scored on.
    pub windows: u32,
}

/// An error at `path`, with `msg` after it.
fn input(path: &Path, msg: String) -> EvalError {
    EvalError::Input(format!("{}{msg}", path.display()))
}

/// Split CSV text into records (RFC 4180: quoted fields, `""` escapes, quoted newlines), each
/// with the line it starts on.
pub fn records(text: &str, path: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let mut out = Vec::new();
    let (mut fields, mut field) = (Vec::new(), String::new());
    let (mut line, mut start) = (1usize, 1usize);
    let (mut quoted, mut was_quoted) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => (quoted, was_quoted) = (true, true),
            '"' => return Err(input(path, format!(
                ":{line}: a quote inside an unquoted field (quote the whole field, double inner quotes)"
            ))),
            ',' => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                out.push((start, std::mem::take(&mut fields)));
                was_quoted = false;
                line += 1;
                start = line;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(input(
            path,
            format!(":{start}: a quoted field is never closed"),
        ));
    }
    if !field.is_empty() || !fields.is_empty() || was_quoted {
        fields.push(field);
        out.push((start, fields));
    }
    Ok(out)
}

/// [`COLUMNS`] with the x column of `axis` in place of `bits_per_weight`.
fn columns_for(axis: XAxis) -> [&'static str; COLUMNS.len()] {
    let mut c = COLUMNS;
    c[2] = axis.column();
    c
}

/// The column of each of [`COLUMNS`] (the x column of `axis`) in `header`.
fn columns(header: &[String], path: &Path, axis: XAxis) -> Result<[usize; COLUMNS.len()]> {
    let names = columns_for(axis);
    let mut col = [0usize; COLUMNS.len()];
    for (slot, name) in col.iter_mut().zip(names) {
        *slot = header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                input(
                    path,
                    format!(
                        ":1: the header has no column `{name}` (expected {}[,command,...])",
                        names.join(",")
                    ),
                )
            })?;
    }
    Ok(col)
}

/// One record as a row, or the reason it is not one (with its file and line).
fn row(
    rec: &[String],
    col: &[usize; COLUMNS.len()],
    path: &Path,
    line: usize,
    axis: XAxis,
) -> Result<Row> {
    let names = columns_for(axis);
    let at = |what: String| input(path, format!(":{line}: {what}"));
    let get = |k: usize| -> Result<&str> {
        rec.get(col[k]).map(|s| s.trim()).ok_or_else(|| {
            at(format!(
                "{} fields, but the header puts `{}` in column {}",
                rec.len(),
                names[k],
                col[k] + 1
            ))
        })
    };
    let positive = |k: usize| -> Result<f64> {
        let s = get(k)?;
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err(at(format!("{} `{s}` is not a positive number", names[k]))),
        }
    };
    let (label, source) = (get(0)?, get(1)?);
    if label.is_empty() || source.is_empty() {
        return Err(at("label and source must not be empty".into()));
    }
    // With a sparsity axis the point's x is its density (see `XAxis`).
    let bits_per_weight = match axis {
        XAxis::BitsPerWeight | XAxis::ModelBitsPerWeight => positive(2)?,
        XAxis::Sparsity => {
            let s = get(2)?;
            match s.parse::<f64>() {
                Ok(v) if (0.0..1.0).contains(&v) => 1.0 - v,
                _ => return Err(at(format!("sparsity `{s}` is not a fraction in [0, 1)"))),
            }
        }
    };
    let ppl = positive(3)?;
    let w = get(4)?;
    let Ok(windows) = w.parse::<u32>() else {
        return Err(at(format!("windows `{w}` is not a whole number")));
    };
    Ok(Row {
        point: ChartPoint {
            label: label.to_string(),
            bits_per_weight,
            ppl,
            source: source.to_string(),
        },
        windows,
    })
}

/// Every row of the results CSV text `text` (read from `path`), refusing the first bad one
/// with its file and line. Blank records are skipped.
pub fn parse_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    parse_rows_for(text, path, XAxis::BitsPerWeight)
}

/// [`parse_rows`] with the x column of `axis`.
pub fn parse_rows_for(text: &str, path: &Path, axis: XAxis) -> Result<Vec<Row>> {
    let mut recs = records(text, path)?.into_iter();
    let Some((_, header)) = recs.next() else {
        return Err(input(
            path,
            format!(": empty; expected a header {}", COLUMNS.join(",")),
        ));
    };
    let col = columns(&header, path, axis)?;
    recs.filter(|(_, rec)| !rec.iter().all(|f| f.trim().is_empty()))
        .map(|(line, rec)| row(&rec, &col, path, line, axis))
        .collect()
}

/// Every row of the results CSV at `path`.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    read_rows_for(path, XAxis::BitsPerWeight)
}

/// Every row of the results CSV at `path`, with the x column of `axis`.
pub fn read_rows_for(path: &Path, axis: XAxis) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_rows_for(&text, path, axis)
}

/// The points of the rows scored on `windows`; none is an error naming the windows present.
pub fn points_at(rows: Vec<Row>, windows: u32, path: &Path) -> Result<Vec<ChartPoint>> {
    let mut seen: Vec<u32> = rows.iter().map(|r| r.windows).collect();
    seen.sort_unstable();
    seen.dedup();
    let points: Vec<ChartPoint> = rows
        .into_iter()
        .filter(|r| r.windows == windows)
        .map(|r| r.point)
        .collect();
    if points.is_empty() {
        let seen: Vec<String> = seen.iter().map(u32::to_string).collect();
        return Err(input(
            path,
            format!(
                ": no rows with windows = {windows} (the file has windows: {})",
                if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                }
            ),
        ));
    }
    Ok(points)
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct ChartRequest {
    /// The results CSV.
    pub data: PathBuf,
    /// The PNG to write.
    pub output: PathBuf,
    /// Keep only the rows scored on this many windows.
    pub windows: u32,
    /// Chart title (default: names the protocol and the windows).
    pub title: Option<String>,
    /// Image size in pixels (width, height).
    pub size: (u32, u32),
    /// What the horizontal axis shows (default bits/weight).
    pub x: XAxis,
}

/// A drawn chart: its request, title and points.
#[derive(Debug, Clone)]
pub struct DrawnChart {
    /// What was asked.
    pub request: ChartRequest,
    /// The title drawn.
    pub title: String,
    /// The points drawn.
    pub points: Vec<ChartPoint>,
}

/// Read `req.data`, keep the rows of `req.windows` and draw them into `req.output`.
pub fn draw(req: &ChartRequest) -> Result<DrawnChart> {
    shrink_io::refuse_inputs(&req.output, &[&req.data])?;
    let points = points_at(read_rows_for(&req.data, req.x)?, req.windows, &req.data)?;
    let against = match req.x {
        XAxis::BitsPerWeight | XAxis::ModelBitsPerWeight => "bits/weight",
        XAxis::Sparsity => "sparsity",
    };
    let title = req.title.clone().unwrap_or_else(|| {
        format!(
            "Perplexity against {against}, lee-ppl-v1, {} windows of 512 tokens",
            req.windows
        )
    });
    chart::ppl_vs_x_sized(&points, &req.output, &title, req.size, req.x)?;
    Ok(DrawnChart {
        request: req.clone(),
        title,
        points,
    })
}

impl DrawnChart {
    /// Points measured by shrink.
    pub fn shrink_points(&self) -> usize {
        self.points
            .iter()
            .filter(|p| p.source == chart::SHRINK)
            .count()
    }

    /// Points that carry a label.
    pub fn labelled(&self) -> usize {
        chart::labelled(&self.points).iter().filter(|&&l| l).count()
    }

    /// The chart as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let off: Vec<_> = chart::off_chart(&self.points)
            .iter()
            .map(|p| {
                let mut v = serde_json::json!({"label": p.label, "source": p.source, "ppl": p.ppl});
                v[self.request.x.column()] =
                    serde_json::json!(self.request.x.shown(p.bits_per_weight));
                v
            })
            .collect();
        let r = &self.request;
        serde_json::json!({
            "output": r.output,
            "data": r.data,
            "windows": r.windows,
            "title": self.title,
            "width": r.size.0,
            "height": r.size.1,
            "points": self.points.len(),
            "shrink_points": self.shrink_points(),
            "labelled": self.labelled(),
            "baseline": chart::baseline(&self.points).map(|b| serde_json::json!({"label": b.label, "ppl": b.ppl})),
            "ppl_axis_max": chart::PPL_AXIS_MAX,
            "x": r.x.column(),
            "off_chart": off,
        })
    }

    /// The chart as text: the `wrote` line and the points off the chart.
    pub fn lines(&self) -> Vec<String> {
        let (r, shrink) = (&self.request, self.shrink_points());
        let mut v = vec![format!(
            "wrote {} ({}x{}): {} points at {} windows ({shrink} shrink, {} peer or base), {} labelled",
            r.output.display(),
            r.size.0,
            r.size.1,
            self.points.len(),
            r.windows,
            self.points.len() - shrink,
            self.labelled(),
        )];
        for p in chart::off_chart(&self.points) {
            v.push(format!(
                "  off the chart (PPL > {}): {} ({}) {:.3} bits/weight, PPL {:.4}",
                chart::PPL_AXIS_MAX,
                p.label,
                p.source,
                p.bits_per_weight,
                p.ppl
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "command,label,source,bits_per_weight,ppl,windows\n";

    fn parse(body: &str) -> Result<Vec<Row>> {
        parse_rows(&format!("{HEADER}{body}"), Path::new("r.csv"))
    }

    #[test]
    fn quoted_fields_escapes_and_newlines() {
        let recs = records("a,\"b,\"\"c\"\"\nd\",e\r\nf\n", Path::new("x")).unwrap();
        assert_eq!(
            recs[0],
            (1, vec!["a".into(), "b,\"c\"\nd".into(), "e".into()])
        );
        assert_eq!(recs[1], (3, vec!["f".into()]));
    }

    #[test]
    fn rows_by_header_name_and_blank_lines_skipped() {
        let rows =
            parse("\"q, x\",nf4,shrink,4.127,12.5,24\n,,,,,\nf32,f32,base,32,10,74\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].point.label, "nf4");
        assert_eq!(rows[0].point.bits_per_weight, 4.127);
        assert_eq!(rows[1].windows, 74);
        let pts = points_at(rows.clone(), 24, Path::new("r.csv")).unwrap();
        assert_eq!(pts.len(), 1);
        let e = points_at(rows, 7, Path::new("r.csv")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "r.csv: no rows with windows = 7 (the file has windows: 24, 74)"
        );
    }

    #[test]
    fn bad_rows_are_named_by_file_and_line() {
        let cases = [
            (
                "c,nf4,shrink,-1,12,24\n",
                "r.csv:2: bits_per_weight `-1` is not a positive number",
            ),
            (
                "c,nf4,shrink,4,inf,24\n",
                "r.csv:2: ppl `inf` is not a positive number",
            ),
            (
                "c,,shrink,4,12,24\n",
                "r.csv:2: label and source must not be empty",
            ),
            (
                "c,nf4,shrink,4,12,2.5\n",
                "r.csv:2: windows `2.5` is not a whole number",
            ),
            (
                "c,nf4\n",
                "r.csv:2: 2 fields, but the header puts `source` in column 3",
            ),
            ("c,n\"f4\n", "r.csv:2: a quote inside an unquoted field"),
            ("\"c\n\n", "r.csv:2: a quoted field is never closed"),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.starts_with(want), "{body:?}: {e}");
        }
        let e = parse_rows("label,source\n", Path::new("r.csv")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("r.csv:1: the header has no column `bits_per_weight`"));
        let e = parse_rows("", Path::new("r.csv")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("r.csv: empty; expected a header label,source"));
    }

    #[test]
    fn a_missing_file_cannot_be_read() {
        let e = read_rows(Path::new("/nonexistent/r.csv")).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/r.csv: cannot read");
        assert!(std::error::Error::source(&e).is_some());
    }
}
