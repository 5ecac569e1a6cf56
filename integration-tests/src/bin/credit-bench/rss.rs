//! Peak resident memory of the server process, sampled from /proc while the
//! load runs (a final reading alone would miss a peak under load).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

const INTERVAL: Duration = Duration::from_millis(50);

/// Samples `VmRSS` of one process until dropped.
pub struct RssSampler {
    peak_kb: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let peak = peak_kb.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            loop {
                tick.tick().await;
                match vm_rss_kb(pid) {
                    Some(kb) => {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    // Gone: the process exited; the runner notices.
                    None => return,
                }
            }
        });
        RssSampler { peak_kb, task }
    }

    /// The peak since the last call, in MiB, and starts a new window.
    pub fn take_peak_mb(&self) -> Option<f64> {
        let kb = self.peak_kb.swap(0, Ordering::Relaxed);
        (kb > 0).then(|| kb as f64 / 1024.0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `VmRSS` of `pid` in KiB, from /proc/PID/status.
fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}
