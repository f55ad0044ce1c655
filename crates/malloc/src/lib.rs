//! glibc's malloc, tuned for processes that move MiB-sized buffers.
//!
//! Both the server and the load generator decode and encode gRPC messages
//! of 1 MiB, each into a buffer of its own (tonic), and read and write
//! blobs through buffers of hundreds of KiB on many threads. glibc's
//! defaults serve that badly (below); [`tune`] sets what does, once, at the
//! start of `main`.
//!
//! Measured on the load generator (`bazel-cache bench`, 1 MiB ByteStream
//! writes, 16 clients): 2.0-2.2 s of system time per 4 s run with glibc's
//! defaults, mostly faulting in, zeroing and unmapping encode buffers;
//! 1.1-1.2 s with these settings.

/// Tunes glibc's malloc for MiB-sized buffers, unless the environment
/// already does (`MALLOC_*` variables, `GLIBC_TUNABLES`). Call it first in
/// `main`, before any other thread exists. Elsewhere than glibc on Linux it
/// does nothing.
///
/// Figures below are the server's.
///
/// **Arenas: at most 4.** By default glibc gives up to 8 arenas per core to
/// the threads that allocate, and file I/O runs on tokio's blocking
/// threads, each allocating 256 KiB buffers: after 64 concurrent 1 MiB gRPC
/// reads the server kept 460 MiB resident, freed but fragmented over those
/// arenas; with 4 it kept 93 MiB, at the same throughput (2-core VM, debug
/// build).
///
/// **Fixed thresholds: mmap above 8 MiB, trim past 16 MiB.** glibc's
/// defaults move with what is freed: each freed mmapped chunk raises the
/// mmap threshold to its size, and the trim threshold to twice that. A
/// gRPC message of 1 MiB is decoded into a buffer of its own (tonic), so
/// with 16 ByteStream writes in flight those buffers were either mmapped
/// or carved from the top of a heap that the next free trimmed again:
/// 112-140 page faults per 1 MiB write (4-12 for an HTTP PUT), all in the
/// decoder's first copy into the new buffer, and 7 % of the server's CPU
/// in faulting, zeroing and unmapping pages. With these two, 0-3 faults a
/// write; peak RSS under that load went from 46-49 to 54-58 MiB. Buffers
/// up to 8 MiB (a 4 MiB batch message) come from the heaps and are reused,
/// and memory freed after a burst goes back by the server's periodic
/// `malloc_trim` (its `src/malloc_trim.rs`), not by every free.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let ours = Ours::given(|name| std::env::var(name).ok());
        // SAFETY: mallopt only changes allocator tuning; called before any
        // other thread exists.
        #[allow(unsafe_code)]
        unsafe {
            if ours.arenas {
                libc::mallopt(libc::M_ARENA_MAX, 4);
            }
            if ours.thresholds {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
            }
        }
    }
}

/// Which settings are ours to make: those the environment leaves alone.
/// The two thresholds go together, since setting either one stops glibc
/// from moving the other.
#[derive(Debug, PartialEq)]
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
struct Ours {
    arenas: bool,
    thresholds: bool,
}

#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
impl Ours {
    /// `var` reads an environment variable.
    fn given(var: impl Fn(&str) -> Option<String>) -> Ours {
        let tunables = var("GLIBC_TUNABLES").unwrap_or_default();
        // `name=value` pairs separated by ':'.
        let tuned = |name: &str| {
            tunables
                .split(':')
                .any(|pair| pair.split_once('=').is_some_and(|(n, _)| n == name))
        };
        let free = |variables: &[&str], names: &[&str]| {
            !variables.iter().any(|v| var(v).is_some()) && !names.iter().any(|n| tuned(n))
        };
        Ours {
            arenas: free(&["MALLOC_ARENA_MAX"], &["glibc.malloc.arena_max"]),
            thresholds: free(
                &["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"],
                &["glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ours;

    fn given(vars: &[(&str, &str)]) -> Ours {
        Ours::given(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn an_untouched_environment_leaves_every_setting_to_us() {
        let all = Ours {
            arenas: true,
            thresholds: true,
        };
        assert_eq!(given(&[]), all);
        assert_eq!(given(&[("GLIBC_TUNABLES", "")]), all);
        // Other tunables, and a name that only starts like ours.
        assert_eq!(
            given(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.tcache_count=0:glibc.malloc.arena_max_x=1"
            )]),
            all
        );
    }

    #[test]
    fn a_setting_chosen_by_the_environment_is_left_alone() {
        assert_eq!(
            given(&[("MALLOC_ARENA_MAX", "2")]),
            Ours {
                arenas: false,
                thresholds: true
            }
        );
        // Either threshold keeps both to the environment.
        for var in ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"] {
            assert_eq!(
                given(&[(var, "131072")]),
                Ours {
                    arenas: true,
                    thresholds: false
                },
                "{var}"
            );
        }
        assert_eq!(
            given(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.trim_threshold=1:glibc.malloc.arena_max=8"
            )]),
            Ours {
                arenas: false,
                thresholds: false
            }
        );
    }
}
