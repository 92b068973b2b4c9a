//! `shrink chart`: perplexity against bits/weight for every method of a results CSV, as a PNG.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shrink_eval::chart::{self, ChartPoint};

/// The columns `shrink chart` reads; others (e.g. `command`) are carried for the reader.
const COLUMNS: [&str; 5] = ["label", "source", "bits_per_weight", "ppl", "windows"];

/// Arguments of `shrink chart`.
#[derive(clap::Args)]
#[command(after_help = "\
The CSV has a header naming at least the columns label,source,bits_per_weight,ppl,windows
(docs/results/ppl-bits.csv adds command; extra columns are ignored). One row per measured
method: source is \"shrink\", \"base\" (f32/bf16/fp16; the widest is drawn as the dashed
baseline) or the peer tool (llama.cpp, bitsandbytes, hqq, ...); bits_per_weight counts the
quantized tensors only, scales and zeros included; windows is how many 512-token windows of
lee-ppl-v1 the perplexity was scored on (peers.md compares the first 24).

The chart: both axes log scale, perplexity capped at 300 (higher points are listed beside it),
shrink's points filled red, labels on shrink's points and each peer's Pareto front.

Examples:
  shrink chart --data docs/results/ppl-bits.csv -o docs/results/ppl-bits.png
  shrink chart --data docs/results/ppl-bits.csv --windows 74 -o full.png --title \"Full protocol\" --json")]
pub struct Args {
    /// Results CSV (header: label,source,bits_per_weight,ppl,windows[,command,...]).
    #[arg(long)]
    pub data: PathBuf,
    /// The PNG to write (drawn under a temporary name beside it, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep only the rows scored on this many windows.
    #[arg(long, default_value_t = 24)]
    pub windows: u32,
    /// Chart title [default: names the protocol and the windows].
    #[arg(long)]
    pub title: Option<String>,
    /// Image width in pixels.
    #[arg(long, default_value_t = chart::SIZE.0)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = chart::SIZE.1)]
    pub height: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One data row: the point and the windows it was scored on.
struct Row {
    point: ChartPoint,
    windows: u32,
}

/// Split CSV text into records (RFC 4180: quoted fields, `""` escapes, quoted newlines), each
/// with the line it starts on.
fn records(text: &str, path: &Path) -> Result<Vec<(usize, Vec<String>)>> {
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
            '"' => bail!(
                "{}:{line}: a quote inside an unquoted field (quote the whole field, double inner quotes)",
                path.display()
            ),
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
        bail!("{}:{start}: a quoted field is never closed", path.display());
    }
    if !field.is_empty() || !fields.is_empty() || was_quoted {
        fields.push(field);
        out.push((start, fields));
    }
    Ok(out)
}

/// Read every row of a results CSV, refusing the first bad one with its file and line.
fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut recs = records(&text, path)?.into_iter();
    let Some((_, header)) = recs.next() else {
        bail!(
            "{}: empty; expected a header {}",
            path.display(),
            COLUMNS.join(",")
        );
    };
    let mut col = [0usize; COLUMNS.len()];
    for (slot, name) in col.iter_mut().zip(COLUMNS) {
        *slot = header
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| {
                format!(
                    "{}:1: the header has no column `{name}` (expected {}[,command,...])",
                    path.display(),
                    COLUMNS.join(",")
                )
            })?;
    }
    let mut rows = Vec::new();
    for (line, rec) in recs {
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let at = |what: &str| format!("{}:{line}: {what}", path.display());
        let get = |k: usize| -> Result<&str> {
            rec.get(col[k]).map(|s| s.trim()).with_context(|| {
                at(&format!(
                    "{} fields, but the header puts `{}` in column {}",
                    rec.len(),
                    COLUMNS[k],
                    col[k] + 1
                ))
            })
        };
        let positive = |k: usize| -> Result<f64> {
            let s = get(k)?;
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
                _ => bail!(at(&format!(
                    "{} `{s}` is not a positive number",
                    COLUMNS[k]
                ))),
            }
        };
        let (label, source) = (get(0)?, get(1)?);
        if label.is_empty() || source.is_empty() {
            bail!(at("label and source must not be empty"));
        }
        let bits_per_weight = positive(2)?;
        let ppl = positive(3)?;
        let w = get(4)?;
        let Ok(windows) = w.parse::<u32>() else {
            bail!(at(&format!("windows `{w}` is not a whole number")));
        };
        rows.push(Row {
            point: ChartPoint {
                label: label.to_string(),
                bits_per_weight,
                ppl,
                source: source.to_string(),
            },
            windows,
        });
    }
    Ok(rows)
}

/// Run `shrink chart`.
pub fn run(args: Args) -> Result<()> {
    let rows = read_rows(&args.data)?;
    let mut seen: Vec<u32> = rows.iter().map(|r| r.windows).collect();
    seen.sort_unstable();
    seen.dedup();
    let points: Vec<ChartPoint> = rows
        .into_iter()
        .filter(|r| r.windows == args.windows)
        .map(|r| r.point)
        .collect();
    if points.is_empty() {
        let seen: Vec<String> = seen.iter().map(u32::to_string).collect();
        bail!(
            "{}: no rows with windows = {} (the file has windows: {})",
            args.data.display(),
            args.windows,
            if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            }
        );
    }
    let title = args.title.clone().unwrap_or_else(|| {
        format!(
            "Perplexity against bits/weight, lee-ppl-v1, {} windows of 512 tokens",
            args.windows
        )
    });
    chart::ppl_vs_bits_sized(&points, &args.output, &title, (args.width, args.height))?;

    let off = chart::off_chart(&points);
    let labelled = chart::labelled(&points).iter().filter(|&&l| l).count();
    let shrink = points.iter().filter(|p| p.source == chart::SHRINK).count();
    if args.json {
        let off: Vec<_> = off
            .iter()
            .map(|p| {
                serde_json::json!({
                    "label": p.label, "source": p.source,
                    "bits_per_weight": p.bits_per_weight, "ppl": p.ppl,
                })
            })
            .collect();
        let out = serde_json::json!({
            "output": args.output,
            "data": args.data,
            "windows": args.windows,
            "title": title,
            "width": args.width,
            "height": args.height,
            "points": points.len(),
            "shrink_points": shrink,
            "labelled": labelled,
            "baseline": chart::baseline(&points).map(|b| serde_json::json!({"label": b.label, "ppl": b.ppl})),
            "ppl_axis_max": chart::PPL_AXIS_MAX,
            "off_chart": off,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "wrote {} ({}x{}): {} points at {} windows ({shrink} shrink, {} peer or base), {labelled} labelled",
            args.output.display(),
            args.width,
            args.height,
            points.len(),
            args.windows,
            points.len() - shrink,
        );
        for p in off {
            println!(
                "  off the chart (PPL > {}): {} ({}) {:.3} bits/weight, PPL {:.4}",
                chart::PPL_AXIS_MAX,
                p.label,
                p.source,
                p.bits_per_weight,
                p.ppl
            );
        }
    }
    Ok(())
}
