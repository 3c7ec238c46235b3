//! Progress bars for long commands (hidden when stderr is not a terminal or with `--quiet`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use seqclust_data::Progress;

/// An indicatif bar that follows the phases of a job.
pub struct Bars {
    bar: ProgressBar,
}

impl Bars {
    /// A bar on stderr, or a hidden one.
    pub fn new(quiet: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            None,
            if quiet {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        Bars { bar }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bars {
    fn phase(&self, name: &str, total: Option<u64>) {
        let template = if name == "read" {
            "{msg:>9} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})"
        } else {
            "{msg:>9} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} (eta {eta})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style);
        }
        self.bar.set_message(name.to_string());
        self.bar.set_position(0);
        self.bar.set_length(total.unwrap_or(0));
        self.bar.reset_elapsed();
    }

    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
}
