//! Watching a server process while a bench abuses it: its resident memory
//! and open file descriptors, sampled from /proc, and a memory cap past
//! which the server is killed, so that a bench measuring an unbounded
//! server cannot take the machine (and everything else on it) down.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{fd_count, proc_status_kib};

/// How often the resident memory is read (the kernel's `VmHWM` catches
/// what falls between two samples).
const RSS_EVERY: Duration = Duration::from_millis(10);
/// File descriptors are counted every this many RSS samples (a directory
/// listing of thousands of entries is not free).
const FDS_EVERY: u32 = 10;

#[derive(Default)]
struct Peaks {
    rss_kib: AtomicU64,
    fds: AtomicU64,
    killed: AtomicBool,
    stop: AtomicBool,
}

/// Samples one process until dropped.
pub(crate) struct Watch {
    pid: u32,
    peaks: Arc<Peaks>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts sampling `pid`; kills it (SIGKILL) when its resident memory
    /// passes `cap_kib`.
    pub(crate) fn start(pid: u32, cap_kib: u64) -> Watch {
        let peaks = Arc::new(Peaks::default());
        let p = peaks.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u32;
            while !p.stop.load(Ordering::Relaxed) {
                let rss = proc_status_kib(pid, "VmRSS:");
                p.rss_kib.fetch_max(rss, Ordering::Relaxed);
                if rss > cap_kib && !p.killed.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "server {pid}: {} MiB resident, past the cap of {} MiB: killing it",
                        rss / 1024,
                        cap_kib / 1024
                    );
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                if n.is_multiple_of(FDS_EVERY) {
                    p.fds.fetch_max(fd_count(pid), Ordering::Relaxed);
                }
                n = n.wrapping_add(1);
                std::thread::sleep(RSS_EVERY);
            }
        });
        Watch {
            pid,
            peaks,
            thread: Some(thread),
        }
    }

    /// The highest resident memory seen so far: the samples', or the
    /// kernel's high-water mark if higher.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        self.peaks
            .rss_kib
            .load(Ordering::Relaxed)
            .max(proc_status_kib(self.pid, "VmHWM:"))
    }

    /// The most file descriptors seen open at once so far.
    pub(crate) fn peak_fds(&self) -> u64 {
        self.peaks
            .fds
            .load(Ordering::Relaxed)
            .max(fd_count(self.pid))
    }

    /// Whether the process was killed for passing the cap.
    pub(crate) fn killed(&self) -> bool {
        self.peaks.killed.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.peaks.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
