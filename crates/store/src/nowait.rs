//! Opening and reading a blob file only when the kernel can do it from its
//! caches, so that an async worker may do it itself (disk/read.rs for
//! small blobs, file_chunks.rs for the chunks of large ones).
//!
//! A small GET handed to a blocking thread cost more than the read: the
//! blocking pool's lock (contended: most of the server's `sched_yield`s),
//! a wake-up of a pool thread, a wake-up of the worker when it finishes,
//! two context switches. A hot blob, though, is in the page cache and its
//! path in the dentry cache, and Linux can promise not to block for
//! either: `openat2(RESOLVE_CACHED)` (5.12+) fails with `EAGAIN` instead
//! of reading a directory from disk, and `preadv2(RWF_NOWAIT)` (4.14+)
//! instead of reading a page. `O_NOATIME` keeps a read from dirtying the
//! inode (an atime update can wait on the file system's journal); it
//! needs the file's owner, so a file we do not own (one adopted from a
//! bazel-remote `dir` that ran as another user) is opened again without
//! it. An open file's `fstat` and `close` do no I/O.
//!
//! Each function answers `Ok(None)` when the kernel would have to block,
//! or does not support the call (older kernel, a file system without
//! `RWF_NOWAIT`, a sandbox refusing `openat2`): the caller then takes the
//! blocking path. A call the kernel lacks is not tried again.
//!
//! tmpfs (a Kubernetes `emptyDir` in memory, `/dev/shm`) refuses
//! `RWF_NOWAIT` (`EOPNOTSUPP`, still in Linux 6.18), yet its reads never
//! wait on a disk: its pages are memory. There a plain read is what
//! `RWF_NOWAIT` promises, and it is used instead; before, one refusal sent
//! every read of the process to a blocking thread (a 4 KiB GET from a
//! store on tmpfs cost about 80 µs of server CPU instead of about 35).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Cleared when the kernel lacks `openat2(RESOLVE_CACHED)`.
static OPEN_SUPPORTED: AtomicBool = AtomicBool::new(true);

/// How [`read_into`] reads: one of the `READ_*` values. A store's files
/// are on one file system, so the first answer holds for the process.
static READ_MODE: AtomicU8 = AtomicU8::new(READ_NOWAIT);
/// `preadv2(RWF_NOWAIT)`.
const READ_NOWAIT: u8 = 0;
/// A plain `preadv2`: the file system refused `RWF_NOWAIT` but keeps its
/// files in memory (tmpfs, ramfs).
const READ_MEMORY: u8 = 1;
/// Not at all: every read takes the blocking path.
const READ_NEVER: u8 = 2;

/// Whether the kernel refused a call (rather than a would-block).
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

/// Whether an error means "cannot be done without blocking, or not here":
/// the caller falls back to the blocking path.
fn would_block_or_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EPERM)) || unsupported(e)
}

/// Whether `file` is on a file system whose pages are memory, so that
/// reading it never waits on a disk.
fn in_memory(file: &File) -> bool {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the kernel fills `fs` when the call succeeds; the descriptor
    // is open for as long as `file`.
    #[allow(unsafe_code)]
    let fs = unsafe {
        if libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) != 0 {
            return false;
        }
        fs.assume_init()
    };
    // TMPFS_MAGIC and RAMFS_MAGIC (linux/magic.h). `f_type`'s integer type
    // differs between targets, the magic numbers do not.
    matches!(fs.f_type as u64, 0x0102_1994 | 0x8584_58f6)
}

/// The kernel's `struct open_how` (linux/openat2.h): three u64s, extensible
/// by size. (libc's is `non_exhaustive`, so it cannot be built here.)
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` for reading if its path walk needs nothing but the dentry
/// cache. `Err(NotFound)` when the file does not exist.
pub(crate) fn open(path: &Path) -> io::Result<Option<File>> {
    if !OPEN_SUPPORTED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a blob path"))?;
    open_with_noatime_if_owned(|flags| openat2_cached(&c_path, flags))
}

/// Tries `attempt` with `O_NOATIME`, then without it when that is refused
/// with `EPERM`: the flag needs the caller to own the file (or
/// `CAP_FOWNER`), and files adopted from a bazel-remote `dir` may belong
/// to the user it ran as. Without the retry every read of such a file took
/// the blocking path. `Ok(None)` as [`open`] answers it.
fn open_with_noatime_if_owned(
    mut attempt: impl FnMut(u64) -> io::Result<File>,
) -> io::Result<Option<File>> {
    let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    let opened = match attempt(flags | libc::O_NOATIME as u64) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => attempt(flags),
        other => other,
    };
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e) if unsupported(&e) => {
            OPEN_SUPPORTED.store(false, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) if would_block_or_unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `openat2(path, flags, RESOLVE_CACHED)`.
fn openat2_cached(c_path: &CString, flags: u64) -> io::Result<File> {
    let how = OpenHow {
        flags,
        mode: 0,
        resolve: libc::RESOLVE_CACHED,
    };
    // SAFETY: `c_path` is a NUL-terminated string and `how` an `open_how`
    // whose size is passed with it; both outlive the call, which only
    // reads them.
    #[allow(unsafe_code)]
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it, so the `File` may close it.
    #[allow(unsafe_code)]
    Ok(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

/// Reads `n` bytes from the start of `file` if every page of them is in
/// the page cache. `Err(UnexpectedEof)` when the file is shorter.
pub(crate) fn read(file: &File, n: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(n as usize);
    Ok(read_into(file, 0, &mut buf, 0, n as usize)?.then_some(buf))
}

/// The error of every read of a blob's file that finds it shorter than its
/// index entry: `missing` bytes short (here, and in file_chunks.rs).
pub(crate) fn ended_early(missing: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the file ended {missing} bytes early"),
    )
}

/// Fills `buf` up to `n` bytes in all with the bytes of `file` from
/// `offset` (`buf[from + k]` is the byte at `offset + k`: the first `from`
/// bytes are the caller's, and bytes already in `buf` are kept) as far as the
/// page cache holds them. `Ok(false)` when the next page is not cached:
/// `buf` keeps what was read, for a blocking read to finish.
/// `Err(UnexpectedEof)` when the file ends first. The file's position is
/// not used.
pub(crate) fn read_into(
    file: &File,
    offset: u64,
    buf: &mut Vec<u8>,
    from: usize,
    n: usize,
) -> io::Result<bool> {
    let mut mode = READ_MODE.load(Ordering::Relaxed);
    if mode == READ_NEVER {
        return Ok(false);
    }
    debug_assert!(buf.len() >= from, "the caller's bytes are in place");
    buf.reserve(n.saturating_sub(buf.len()));
    while buf.len() < n {
        let (done, want) = (buf.len() - from, n - buf.len());
        let spare = &mut buf.spare_capacity_mut()[..want];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: `iov` describes part of the vector's spare capacity,
        // valid for writes of `iov_len` bytes and used by nothing else
        // during the call; the descriptor is open for as long as `file`.
        #[allow(unsafe_code)]
        let got = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                if mode == READ_NOWAIT {
                    libc::RWF_NOWAIT
                } else {
                    0
                },
            )
        };
        match got {
            0 => {
                return Err(ended_early((n - buf.len()) as u64));
            }
            got if got > 0 => {
                // SAFETY: the kernel wrote `got` bytes into the spare
                // capacity, right after the initialised ones.
                #[allow(unsafe_code)]
                unsafe {
                    buf.set_len(buf.len() + got as usize)
                };
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if mode == READ_NOWAIT && unsupported(&e) {
                    mode = if in_memory(file) {
                        READ_MEMORY
                    } else {
                        READ_NEVER
                    };
                    READ_MODE.store(mode, Ordering::Relaxed);
                    if mode == READ_MEMORY {
                        continue;
                    }
                }
                return if would_block_or_unsupported(&e) {
                    Ok(false)
                } else {
                    Err(e)
                };
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cached_file_and_reports_missing_and_short_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // Just written: its path and pages are cached. (CI's kernel has
        // both calls; on one older than 5.12 this test fails, the server
        // falls back.)
        let file = open(&path).unwrap().expect("a cached path opens");
        assert_eq!(read(&file, data.len() as u64).unwrap().unwrap(), data);
        let short = read(&file, data.len() as u64 + 1).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        // From an offset, after what the buffer already holds.
        let mut buf = data[100..150].to_vec();
        assert!(read_into(&file, 100, &mut buf, 0, 200).unwrap());
        assert_eq!(buf, data[100..300]);
        // A failed lookup leaves a negative dentry: cached knowledge too.
        let absent = dir.path().join("absent");
        assert!(!absent.exists());
        let missing = open(&absent).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    /// tmpfs refuses RWF_NOWAIT; its reads never wait on a disk, so they
    /// are done on the caller's thread all the same (plain reads).
    #[test]
    fn a_file_on_tmpfs_is_read_without_a_blocking_thread() {
        let shm = Path::new("/dev/shm");
        let probe = tempfile::tempfile_in(shm).expect("/dev/shm is writable");
        assert!(in_memory(&probe), "/dev/shm is not tmpfs here");
        let dir = tempfile::tempdir_in(shm).unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = open(&path).unwrap().expect("a cached path opens");
        assert_eq!(read(&file, data.len() as u64).unwrap().unwrap(), data);
        let mut buf = Vec::new();
        assert!(read_into(&file, 9_000, &mut buf, 0, 1_000).unwrap());
        assert_eq!(buf, data[9_000..]);
        // A file on a disk is no file in memory.
        let here = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(!in_memory(&here));
    }

    /// Root may set O_NOATIME on any file, so the tests (run as root)
    /// cannot meet the EPERM a server running as another user gets on an
    /// adopted file: the retry is checked on the attempts it makes.
    #[test]
    fn o_noatime_refused_is_retried_without_it_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"adopted").unwrap();
        let noatime = libc::O_NOATIME as u64;
        let err = |code| Err(io::Error::from_raw_os_error(code));

        // Not the owner: refused with the flag, opened without it.
        let mut tried = Vec::new();
        let file = open_with_noatime_if_owned(|flags| {
            tried.push(flags);
            if flags & noatime != 0 {
                err(libc::EPERM)
            } else {
                File::open(&path)
            }
        })
        .unwrap();
        assert!(file.is_some(), "opened on the second attempt");
        assert_eq!(tried.len(), 2);
        assert_ne!(tried[0] & noatime, 0);
        assert_eq!(tried[1] & noatime, 0);
        assert_eq!(tried[0] & !noatime, tried[1], "only O_NOATIME dropped");

        // The owner: one attempt, with the flag.
        let mut tried = Vec::new();
        let file = open_with_noatime_if_owned(|flags| {
            tried.push(flags);
            File::open(&path)
        })
        .unwrap();
        assert!(file.is_some());
        assert_eq!(tried, vec![tried[0]]);
        assert_ne!(tried[0] & noatime, 0);

        // "Would block" is not retried: the blocking path takes it.
        let mut attempts = 0;
        let got = open_with_noatime_if_owned(|_| {
            attempts += 1;
            err(libc::EAGAIN)
        })
        .unwrap();
        assert!(got.is_none());
        assert_eq!(attempts, 1);

        // Refused both ways (a sandbox forbidding openat2): blocking path.
        let got = open_with_noatime_if_owned(|_| err(libc::EPERM)).unwrap();
        assert!(got.is_none());

        // And a real error is the caller's.
        let missing = open_with_noatime_if_owned(|_| err(libc::ENOENT)).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
