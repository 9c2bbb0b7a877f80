//! Progress bars (indicatif) for phases that take a known time (a goose, wrk, Locust or oha run
//! of N seconds) or reach a known count (the pipeline waits, in `pipeline.rs`). On a terminal they
//! draw; elsewhere (CI logs) indicatif hides them and the plain `[load …]`/`bench:` lines stay.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// A bar that fills with the clock over `secs` seconds; finished and cleared when dropped.
pub struct Timed {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

/// Starts a [`Timed`] bar labelled `label` (needs a Tokio runtime).
pub fn timed(label: &str, secs: u64) -> Timed {
    let total_ms = secs.max(1) * 1000;
    let bar = ProgressBar::new(total_ms).with_message(label.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:>32} {bar:30} {elapsed} of {prefix}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{secs}s"));
    let ticking = bar.clone();
    let ticker = tokio::spawn(async move {
        let start = Instant::now();
        loop {
            let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            ticking.set_position(ms.min(total_ms));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Timed { bar, ticker }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_timed_bar_fills_and_clears() {
        let t = super::timed("phase", 1);
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
        assert!(t.bar.position() >= 200, "{}", t.bar.position());
        drop(t);
    }
}
