//! Gives memory freed after a burst back to the OS.
//!
//! Why: glibc's malloc keeps what a program frees. It returns memory only
//! from the top of a heap (past `M_TRIM_THRESHOLD`) and by unmapping chunks
//! it mmapped. The server fixes the mmap threshold at 8 MiB and the trim
//! threshold at 16 MiB (`bazel_cache_malloc::tune` says why), so 256 KiB
//! buffers, MiB-sized zstd contexts and decoded gRPC messages come from
//! the arenas' heaps, where a single live allocation near a heap's top
//! pins every free page below it.
//! After 3,000 ByteStream Reads parked on one connection, the server held
//! 3.5 GB resident once the connection had closed and everything was
//! freed; after a zstd-bomb flood, likewise.
//!
//! `malloc_trim(0)` hands the free pages inside every arena's heaps back
//! (`MADV_DONTNEED`, glibc 2.8 and later) without moving anything. It walks
//! every arena with its lock held, so it runs only when there is much to
//! give back: [`run`] checks every [`EVERY`] how much of the resident set
//! no live allocation explains (RSS minus malloc's in-use bytes, from
//! `mallinfo2`), and trims when that exceeds its lowest level by
//! [`SLACK`]. A trim that frees little (pages shared with live chunks)
//! raises the level, so a heap that cannot shrink is not walked again and
//! again.

use std::time::Duration;

/// How often the resident set is checked.
pub const EVERY: Duration = Duration::from_secs(5);
/// Memory held free beyond the lowest level seen that triggers a trim.
pub const SLACK: u64 = 32 << 20;

/// Runs for as long as the runtime does (spawn it).
pub async fn run() {
    let mut floor = u64::MAX;
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(idle) = idle_bytes() else {
            return;
        };
        floor = floor.min(idle);
        if idle <= floor.saturating_add(SLACK) {
            continue;
        }
        let after = tokio::task::spawn_blocking(|| {
            trim();
            idle_bytes()
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(idle);
        tracing::debug!(
            before = idle,
            after,
            "returned freed memory to the OS (malloc_trim)"
        );
        if after.saturating_add(SLACK / 4) > idle {
            // Little came back: what is left is fragmentation a trim cannot
            // fix; wait until it grows again.
            floor = after;
        }
    }
}

/// Resident bytes no live allocation accounts for: freed memory malloc
/// still holds, plus the code, stacks and other mappings (a steady part).
/// `None` where this cannot be known (not Linux with glibc).
fn idle_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let rss = pages * page_size()?;
    Some(rss.saturating_sub(malloc_in_use()?))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0)
}

/// Bytes malloc has handed out and not had back (arena chunks in use plus
/// mmapped chunks).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_in_use() -> Option<u64> {
    // SAFETY: mallinfo2 only reads the allocator's statistics (glibc 2.33+).
    #[allow(unsafe_code)]
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks as u64 + info.hblkhd as u64)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only returns free pages to the OS; it takes the
    // arenas' locks itself and is safe to call from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn page_size() -> Option<u64> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_in_use() -> Option<u64> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Memory freed in the middle of a heap stays resident until a trim.
    #[test]
    fn a_trim_returns_memory_freed_below_live_allocations() {
        // Many 200 KiB buffers (under the mmap threshold once it has
        // risen), each followed by a small one that stays.
        let mut big: Vec<Vec<u8>> = Vec::new();
        let mut pins = Vec::new();
        let warm = vec![1u8; 1 << 20];
        drop(warm); // raises the mmap threshold past 200 KiB
        for i in 0..1000 {
            big.push(vec![i as u8; 200 << 10]);
            pins.push(vec![i as u8; 64]);
        }
        let held = idle_bytes().unwrap();
        drop(big);
        let freed = idle_bytes().unwrap();
        assert!(
            freed > held + (100 << 20),
            "freed memory stays resident: {held} -> {freed}"
        );
        trim();
        let after = idle_bytes().unwrap();
        assert!(
            after + (100 << 20) < freed,
            "a trim gives it back: {freed} -> {after}"
        );
        drop(pins);
    }
}
