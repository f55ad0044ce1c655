//! Removing the files of evicted and replaced entries on threads of their
//! own, so that the index writer acknowledges writes without waiting for
//! them.
//!
//! Why: making room for one 1 MiB blob in a store full of 4 KiB ones
//! evicts 256 files, and the writer used to remove them between a batch's
//! commit and its acknowledgement. An unlink of a file whose inode and
//! bitmaps have left the kernel's caches reads them from disk first, so
//! every write waited on hundreds of those: on this machine, a store filled
//! with 4 KiB blobs took 1 MiB ByteStream writes from ~450/s to 49/s
//! (p50 316 ms) until the small files were gone. The removals still cost
//! what they cost; now they overlap the writes instead of blocking them,
//! and [`THREADS`] threads overlap their waits for the disk. The same
//! store now went from ~450/s to 220–360/s in the first two seconds.
//!
//! **A path may be written again before its turn comes** (a blob evicted,
//! then uploaded again). The writer [`Reaper::claim`]s the final paths of
//! each batch's new files before renaming into them: a claimed path that
//! still waits is removed there and then, by the writer, and the threads
//! skip it; one a thread is removing at that moment is waited for. Only
//! the writer renames into blob paths, so nothing else can appear there.
//!
//! **Bounded:** at most [`MAX_FILES`] files, and `max_size / 16` bytes (at
//! least [`MIN_BYTES`]), wait at once; past either, the writer waits for
//! the threads to make room before it hands over more. So the disk holds
//! at most that much more than `max_size`. It used to remove the excess
//! itself, one file after another: when 1 MiB writes landed on a store
//! full of 4 KiB blobs, the backlog filled in under two seconds and the
//! writer then spent 3-4 s removing some 58,000 files in one batch while
//! every write waited (p99 3.4-4.2 s against a p50 of 150 ms at 64
//! clients). With cold metadata one thread removed 9,000-14,000 files a
//! second on this machine, 4 threads 24,000-30,000, 8 threads 37,000.
//!
//! **A file system mounted with `discard`** makes every removal wait for
//! the disk as well: ext4 issues the discard of a file's freed blocks in
//! the unlink (without a journal, at once; with one, at its commit). On
//! an ext4 without a journal here, 4 KiB files went at 7,300 a second on
//! one thread with `discard` and 65,000 without; empty files, which free
//! no blocks, at 120,000 on this machine's root file system, which has
//! `discard`. Those waits overlap too: 40,000 files of 4 KiB went at
//! 15,000 a second on 1 thread, 46,000 on 8, 61,000 on 16, 59,000 on 32
//! and 38,000 on 64, so there are [`THREADS`] = 16. (Mounting a cache's
//! file system without `discard` and trimming it periodically, with
//! `fstrim.timer`, is the better cure: README, "Storage".)
//! The writer waits for a sixteenth of the bound to clear (not for each
//! file), and it waits after acknowledging its batch's writes.
//!
//! **Stops:** [`Reaper::finish`] removes everything waiting before the
//! writer lets the index be marked clean, since a file left behind would
//! be in no entry, its space counted nowhere, and a clean start does not
//! look for such files. After a crash, recovery adopts a file that was
//! waiting as a blob like any other (it is one), and eviction takes it
//! again in its turn.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// Most files waiting at once.
pub(super) const MAX_FILES: usize = 65_536;
/// The byte bound's floor, for small `max_size`s.
pub(super) const MIN_BYTES: u64 = 64 << 20;
/// Removal threads: an unlink mostly waits for the disk, to read
/// metadata back or to discard freed blocks, and several overlap those
/// waits (rates in the module doc).
const THREADS: usize = 16;

#[derive(Default)]
struct Waiting {
    /// Each waiting path and its size on disk.
    paths: HashMap<PathBuf, u64>,
    bytes: u64,
    /// Paths a thread is removing at this moment.
    removing: HashSet<PathBuf>,
    /// While the writer waits for room: the files and bytes the backlog
    /// must fall to before it is woken. It waits for a sixteenth of the
    /// bound to clear, not for each file, so that the threads removing
    /// tens of thousands of files a second do not wake it for every one;
    /// a quarter held it for 0.5-0.7 s at a time (4,096 files take about
    /// 0.15 s).
    room_at: Option<(usize, u64)>,
    /// Callers of `claim` and `wait_idle` waiting for removals to end:
    /// woken after every removal while there are any.
    watchers: usize,
}

impl Waiting {
    /// Whether the backlog is down to `files` and `bytes`.
    fn within(&self, (files, bytes): (usize, u64)) -> bool {
        self.paths.len() <= files && self.bytes <= bytes
    }

    /// Whether a removal just now should wake the waiters.
    fn wake(&self) -> bool {
        self.watchers > 0 || self.room_at.is_some_and(|room| self.within(room))
    }
}

#[derive(Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled when a path leaves `removing` while someone waits for
    /// that (see [`Waiting::wake`]).
    removed: Condvar,
}

/// The removal thread and what it has yet to remove.
pub(super) struct Reaper {
    shared: Arc<Shared>,
    tx: Option<std::sync::mpsc::Sender<PathBuf>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "removing evicted blob");
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    // Nothing panics while holding it; a poisoned map is still consistent.
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// A thread's turn for one path: removed unless claimed since it was
/// handed over. While it is being removed it is marked, and a claim of it
/// waits for the removal to end.
fn reap(shared: &Shared, path: &Path) {
    {
        let mut w = lock(&shared.waiting);
        let Some(size) = w.paths.remove(path) else {
            return;
        };
        w.bytes -= size;
        w.removing.insert(path.to_path_buf());
    }
    remove(path);
    let wake = {
        let mut w = lock(&shared.waiting);
        w.removing.remove(path);
        w.wake()
    };
    if wake {
        shared.removed.notify_all();
    }
}

impl Reaper {
    pub(super) fn start() -> std::io::Result<Reaper> {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..THREADS {
            let shared = shared.clone();
            let rx = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("index-reaper-{i}"))
                    .spawn(move || {
                        loop {
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok(path) = next else { break };
                            reap(&shared, &path);
                        }
                    })?,
            );
        }
        Ok(Reaper {
            shared,
            tx: Some(tx),
            threads,
        })
    }

    /// Hands over files to remove, each with its size on disk. While the
    /// backlog is at its bound, waits for the threads to make room rather
    /// than removing files here one at a time: they remove several at once
    /// (module doc), so the writer is held for a third of the time or less.
    pub(super) fn remove(&self, files: Vec<(PathBuf, u64)>, max_size: u64) {
        if files.is_empty() {
            return;
        }
        let max_bytes = (max_size / 16).max(MIN_BYTES);
        let mut now = Vec::new();
        {
            let mut w = lock(&self.shared.waiting);
            for (path, size) in files {
                // Larger than the whole bound (a blob of max_size / 16 or
                // more), or handed over twice: removed here.
                if size > max_bytes || w.paths.contains_key(&path) {
                    now.push(path);
                    continue;
                }
                let Some(tx) = &self.tx else {
                    now.push(path);
                    continue;
                };
                if w.paths.len() >= MAX_FILES || w.bytes + size > max_bytes {
                    let room_at = (
                        MAX_FILES - MAX_FILES / 16,
                        max_bytes - (max_bytes / 16).max(size),
                    );
                    w.room_at = Some(room_at);
                    while !w.within(room_at) {
                        w = self
                            .shared
                            .removed
                            .wait(w)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    w.room_at = None;
                }
                w.paths.insert(path.clone(), size);
                w.bytes += size;
                if let Err(returned) = tx.send(path) {
                    // The threads are gone: take the path back.
                    let path = returned.0;
                    w.paths.remove(&path);
                    w.bytes -= size;
                    now.push(path);
                }
            }
        }
        for path in now {
            remove(&path);
        }
    }

    /// Takes back a path about to be written: if it still waits, it is
    /// removed now, so the reaper cannot remove the new file; if a thread
    /// is removing it, that removal is waited for.
    pub(super) fn claim(&self, path: &Path) {
        let mut w = lock(&self.shared.waiting);
        let waiting = w.paths.remove(path);
        if let Some(size) = waiting {
            w.bytes -= size;
        }
        w.watchers += 1;
        while w.removing.contains(path) {
            w = self
                .shared
                .removed
                .wait(w)
                .unwrap_or_else(|e| e.into_inner());
        }
        w.watchers -= 1;
        drop(w);
        // Out of the map, so the threads skip it; only the writer renames
        // into a blob path, so nothing appears there meanwhile.
        if waiting.is_some() {
            remove(path);
        }
    }

    /// Waits until every file handed over is removed: a flush covers the
    /// removals decided before it, as it covers the commits.
    pub(super) fn wait_idle(&self) {
        let mut w = lock(&self.shared.waiting);
        w.watchers += 1;
        while !w.paths.is_empty() || !w.removing.is_empty() {
            w = self
                .shared
                .removed
                .wait(w)
                .unwrap_or_else(|e| e.into_inner());
        }
        w.watchers -= 1;
    }

    /// Whether `path` waits to be removed.
    pub(super) fn is_waiting(&self, path: &Path) -> bool {
        let w = lock(&self.shared.waiting);
        w.paths.contains_key(path) || w.removing.contains(path)
    }

    /// Files and bytes waiting.
    #[cfg(test)]
    pub(super) fn backlog(&self) -> (usize, u64) {
        let w = lock(&self.shared.waiting);
        (w.paths.len(), w.bytes)
    }

    /// Removes everything waiting, then stops the thread.
    pub(super) fn finish(&mut self) {
        drop(self.tx.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("f{i}"));
                std::fs::write(&path, b"old").unwrap();
                path
            })
            .collect()
    }

    /// A reaper whose thread never runs: what waits stays waiting until a
    /// test calls [`reap`].
    fn stalled() -> (Reaper, std::sync::mpsc::Receiver<PathBuf>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let reaper = Reaper {
            shared: Arc::default(),
            tx: Some(tx),
            threads: Vec::new(),
        };
        (reaper, rx)
    }

    /// A stalled reaper, and a thread handing it `paths` (each of `size`
    /// bytes) as the writer would, which may wait for room.
    fn handing_over(
        paths: &[PathBuf],
        size: u64,
        max_size: u64,
    ) -> (
        Arc<Reaper>,
        std::sync::mpsc::Receiver<PathBuf>,
        std::thread::JoinHandle<()>,
    ) {
        let (reaper, rx) = stalled();
        let reaper = Arc::new(reaper);
        let files = paths.iter().map(|p| (p.clone(), size)).collect();
        let handing = {
            let reaper = reaper.clone();
            std::thread::spawn(move || reaper.remove(files, max_size))
        };
        (reaper, rx, handing)
    }

    #[test]
    fn removes_what_it_is_handed_by_the_time_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut reaper = Reaper::start().unwrap();
        let handed = files(dir.path(), 100);
        reaper.remove(handed.iter().map(|p| (p.clone(), 3)).collect(), 1 << 30);
        reaper.finish();
        assert!(handed.iter().all(|p| !p.exists()));
        assert_eq!(reaper.backlog(), (0, 0));
    }

    #[test]
    fn wait_idle_returns_once_every_handed_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::start().unwrap();
        let handed = files(dir.path(), 500);
        reaper.remove(handed.iter().map(|p| (p.clone(), 3)).collect(), 1 << 30);
        reaper.wait_idle();
        assert!(handed.iter().all(|p| !p.exists()));
        assert_eq!(reaper.backlog(), (0, 0));
    }

    #[test]
    fn a_path_written_again_keeps_its_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let (reaper, rx) = stalled();
        let path = files(dir.path(), 1).remove(0);
        reaper.remove(vec![(path.clone(), 3)], 1 << 30);
        assert!(path.exists() && reaper.is_waiting(&path));
        // The writer claims it before renaming a new blob there.
        reaper.claim(&path);
        assert!(!path.exists() && !reaper.is_waiting(&path));
        std::fs::write(&path, b"new").unwrap();
        // The thread's turn for the old file comes after.
        reap(&reaper.shared, &rx.try_recv().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(reaper.backlog(), (0, 0));
    }

    #[test]
    fn past_its_bound_the_writer_waits_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 3);
        // 40 MiB each against the 64 MiB floor: one fits at a time.
        let (reaper, rx, handing) = handing_over(&paths, 40 << 20, 0);
        for turn in 0..3 {
            // Each file is handed over once the one before is gone; none
            // is removed by the writer itself.
            let next = rx.recv().unwrap();
            assert_eq!(next, paths[turn]);
            assert_eq!(reaper.backlog(), (1, 40 << 20));
            assert!(paths[turn..].iter().all(|p| p.exists()));
            if turn < 2 {
                std::thread::sleep(std::time::Duration::from_millis(50));
                assert!(!handing.is_finished(), "handed over past the bound");
            }
            reap(&reaper.shared, &next);
        }
        handing.join().unwrap();
        assert!(paths.iter().all(|p| !p.exists()));
        assert_eq!(reaper.backlog(), (0, 0));
    }

    #[test]
    fn the_file_count_bounds_the_backlog_too() {
        let dir = tempfile::tempdir().unwrap();
        let many = files(dir.path(), MAX_FILES + 2);
        let (reaper, rx, handing) = handing_over(&many, 1, 1 << 40);
        // The first MAX_FILES are handed over, then the writer waits.
        let first: Vec<PathBuf> = (0..MAX_FILES).map(|_| rx.recv().unwrap()).collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!handing.is_finished(), "handed over past MAX_FILES");
        assert_eq!(reaper.backlog(), (MAX_FILES, MAX_FILES as u64));
        assert_eq!(many.iter().filter(|p| p.exists()).count(), MAX_FILES + 2);
        // It goes on once a sixteenth of the bound has cleared, not at the
        // first free place (each removal would wake it).
        let sixteenth = MAX_FILES / 16;
        for path in &first[..sixteenth - 1] {
            reap(&reaper.shared, path);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!handing.is_finished(), "woken before a sixteenth cleared");
        reap(&reaper.shared, &first[sixteenth - 1]);
        handing.join().unwrap();
        let left = MAX_FILES - sixteenth + 2;
        assert_eq!(reaper.backlog(), (left, left as u64));
    }

    #[test]
    fn a_file_larger_than_the_bound_is_removed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (reaper, _rx) = stalled();
        let path = files(dir.path(), 1).remove(0);
        reaper.remove(vec![(path.clone(), MIN_BYTES + 1)], 0);
        assert!(!path.exists());
        assert_eq!(reaper.backlog(), (0, 0));
    }
}
