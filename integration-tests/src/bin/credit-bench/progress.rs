//! Progress bars on stderr (indicatif draws nothing when stderr is not a
//! terminal, so logs and CI output stay clean).

use std::borrow::Cow;

use indicatif::{ProgressBar, ProgressStyle};

/// One bar, or nothing when progress is off.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar counting `total` items (seeding).
    pub fn items(enabled: bool, label: impl Into<Cow<'static, str>>, total: u64) -> Progress {
        Self::new(
            enabled,
            label,
            total,
            "{prefix:>28} [{bar:30}] {pos}/{len} {msg}",
        )
    }

    /// A bar over `total_ms` milliseconds of load (a run).
    pub fn timed(enabled: bool, label: impl Into<Cow<'static, str>>, total_ms: u64) -> Progress {
        Self::new(
            enabled,
            label,
            total_ms,
            "{prefix:>28} [{bar:30}] {elapsed:>3} {msg}",
        )
    }

    fn new(
        enabled: bool,
        label: impl Into<Cow<'static, str>>,
        total: u64,
        template: &str,
    ) -> Progress {
        let bar = if enabled {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        // A bad template is our bug, not the user's: fall back to the
        // default style rather than fail the run.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        Progress { bar }
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set(&self, position: u64, message: String) {
        self.bar.set_position(position);
        self.bar.set_message(message);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
