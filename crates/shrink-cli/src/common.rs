//! Pieces every command shares: opening a model with its tokenizer, progress bars, byte sizes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_methods::pipeline::Progress;
use shrink_methods::report::Report;

pub use shrink_methods::report::{human, peak_rss};

/// The tokenizer of a checkpoint: tokenizer.json of an HF directory, or the GGUF's vocabulary.
pub fn tokenizer(ckpt: &Checkpoint) -> Result<Tokenizer> {
    Ok(Tokenizer::for_checkpoint(ckpt)?)
}

/// Open a checkpoint, with the path in the error.
pub fn open(path: &Path) -> Result<Checkpoint> {
    Ok(Checkpoint::open(path)?)
}

/// How often a progress line is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A progress bar of `len` steps named `what` on stderr (see [`styled`]).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = styled(len, "{msg}", "");
    pb.set_message(what.to_string());
    pb
}

/// A progress bar of `len` steps on stderr whose line starts with the template `head` and ends
/// with `tail`: drawn in place on a terminal; otherwise (a log file, a pipe) written as a plain
/// line at most every [`LOG_EVERY`], so that a long run redirected to a log shows it is alive.
pub fn styled(len: u64, head: &str, tail: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let tty = std::io::stderr().is_terminal();
    let template = if tty {
        format!("{head} [{{bar:30}}] {{pos}}/{{len}} {{elapsed_precise}} eta {{eta}}{tail}")
    } else {
        format!("{head} {{pos}}/{{len}} ({{percent}} %), {{elapsed_precise}} elapsed, eta {{eta}}{tail}")
    };
    pb.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    if !tty {
        pb.set_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(LogLines::default()),
            1,
        ));
    }
    pb
}

/// A progress bar's "terminal" when stderr is not one: each drawn state is a candidate line,
/// written only when [`LOG_EVERY`] has passed since the last (the first is written at once).
#[derive(Debug, Default)]
struct LogLines {
    last: std::sync::Mutex<Option<Instant>>,
}

impl LogLines {
    fn line(&self, s: &str) -> std::io::Result<()> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return Ok(());
        }
        *last = Some(now);
        eprintln!("{s}");
        Ok(())
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.line(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The library's progress as a bar on stderr.
#[derive(Default)]
pub struct Bar(std::sync::Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn start(&self, what: &str, len: u64) {
        *self.0.lock().expect("not poisoned") = Some(bar(len, what));
    }
    fn inc(&self, n: u64) {
        if let Some(b) = self.0.lock().expect("not poisoned").as_ref() {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
    }
}

/// Print a run's report: its warning (a requantized input) on stderr, then one JSON object,
/// or the `wrote` line, the report's lines and the peak RSS.
pub fn print_report(r: &Report, json: bool) -> Result<()> {
    if let Some(w) = r.extra.get("warning").and_then(|w| w.as_str()) {
        eprintln!("warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r.to_json())?);
        return Ok(());
    }
    println!("wrote          {}", r.output.display());
    for l in r.lines() {
        println!("{l}");
    }
    if let Some(b) = peak_rss() {
        println!("peak RSS       {}", human(b));
    }
    Ok(())
}

/// The run directory of a long run writing `out`: `run_dir`, or OUT.run beside the output.
pub fn run_dir_of(out: &Path, run_dir: Option<&Path>) -> PathBuf {
    run_dir.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut s = out.as_os_str().to_owned();
        s.push(".run");
        PathBuf::from(s)
    })
}
