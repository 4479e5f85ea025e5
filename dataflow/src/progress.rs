//! A progress bar for loading: records and records/s, drawn only when stderr is a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shared by the workers of one process; counting is a relaxed atomic add.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn stderr(what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {human_pos} records ({per_sec}) {elapsed}")
                .expect("valid template"),
        );
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    pub fn hidden() -> Self {
        Progress { bar: ProgressBar::hidden() }
    }

    pub fn add(&self, records: u64) {
        self.bar.inc(records);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
