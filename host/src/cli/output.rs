//! Output helpers: JSON for scripts, aligned tables for people, and progress that is a bar on
//! a terminal and plain lines otherwise.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::model::Target;
use crate::projection::{Progress, target_label};

/// Writes a command's output to stdout. When the reader has gone away (`zdr … | head`) the
/// process ends quietly with success, as the output was read as far as it was wanted; any
/// other write failure ends it with an error message.
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_fmt(text).and_then(|()| out.flush()) {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        write_stderr(format_args!(
            "error: cannot write to standard output: {err}\n"
        ));
        std::process::exit(1);
    }
}

/// Writes progress or a note to stderr, ignoring a closed stderr.
pub fn write_stderr(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// Prints a value as pretty JSON on stdout.
///
/// # Errors
/// When the value cannot be serialised.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as an aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        outln!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// How often plain progress lines are printed at most, unless `ZDR_PROGRESS_INTERVAL_MS`
/// says otherwise (0: after every batch).
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reports catch-up progress: an indicatif bar (events/s, ETA) on a terminal, otherwise one
/// plain line on stderr at most every two seconds (`ZDR_PROGRESS_INTERVAL_MS`) and at the end.
pub struct ProgressReporter {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
    interval: std::time::Duration,
    last: Option<(String, Progress)>,
}

impl ProgressReporter {
    /// A reporter that draws a bar when stderr is a terminal and `quiet` is off.
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} events  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        let interval = std::env::var("ZDR_PROGRESS_INTERVAL_MS")
            .ok()
            .and_then(|ms| ms.trim().parse().ok())
            .map_or(PROGRESS_INTERVAL, std::time::Duration::from_millis);
        Self {
            bar,
            started: Instant::now(),
            last_line: Some(Instant::now()).filter(|_| !interval.is_zero()),
            interval,
            last: None,
        }
    }

    /// Records one committed batch.
    pub fn update(&mut self, target: &Target, progress: Progress) {
        let label = format!("{} ({})", target.projector, target_label(target));
        if let Some(bar) = &self.bar {
            bar.set_message(label.clone());
            bar.set_length(progress.head.max(0) as u64);
            bar.set_position(progress.checkpoint.max(0) as u64);
        } else if self
            .last_line
            .is_none_or(|at| at.elapsed() >= self.interval)
        {
            errln!("{}", Self::line(&label, progress, self.started));
            self.last_line = Some(Instant::now());
        }
        self.last = Some((label, progress));
    }

    fn line(label: &str, p: Progress, started: Instant) -> String {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        format!(
            "{label}: event {} of {}, {} applied ({:.0} events/s)",
            p.checkpoint,
            p.head,
            p.applied,
            p.applied as f64 / secs
        )
    }

    /// Clears the bar and prints the final line, with where the time went.
    pub fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some((label, progress)) = &self.last {
            errln!(
                "{}; time: {}",
                Self::line(label, *progress, self.started),
                progress.time
            );
        }
    }
}
