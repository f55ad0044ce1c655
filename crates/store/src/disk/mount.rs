//! Which mount holds `dir`, and whether it discards freed blocks online.
//!
//! Why: a full cache deletes a file for every blob it evicts, and a file
//! system mounted with `discard` (ext4, XFS) makes each deletion wait for
//! the disk to discard the file's blocks. On this project's test machine
//! that made deleting 4 KiB files about nine times slower (reaper.rs has
//! the figures), so writes that evict many small blobs waited on the
//! disk's discards. Nothing in the server can undo a mount option, so the
//! store says so once at start, naming the mount point, and the README
//! tells operators to trim periodically instead. btrfs's `discard=async`
//! queues discards off the deleting thread and is not reported.

use std::path::{Path, PathBuf};

/// The mount point of the file system holding `path` (an absolute,
/// canonical path) when it is mounted with synchronous online `discard`,
/// read from `mountinfo` (the text of `/proc/self/mountinfo`).
pub(super) fn discarding_mount(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    // The innermost mount holding the path; among mounts on the same
    // point, the last listed (it hides the ones before), which is the one
    // `max_by_key` returns of equal keys.
    let mount = mountinfo
        .lines()
        .filter_map(Mount::parse)
        .filter(|mount| path.starts_with(&mount.point))
        .max_by_key(|mount| mount.point.components().count())?;
    mount.discards.then_some(mount.point)
}

/// Logs a warning when `dir`'s file system discards freed blocks online.
/// Anything unreadable (no procfs, a path that does not resolve) is
/// silently skipped: this is advice, not a check the store depends on.
pub(super) fn warn_if_discarding(dir: &Path) {
    let (Ok(dir), Ok(mountinfo)) = (
        std::fs::canonicalize(dir),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return;
    };
    if let Some(point) = discarding_mount(&mountinfo, &dir) {
        tracing::warn!(
            dir = %dir.display(),
            mount_point = %point.display(),
            "the cache's file system is mounted with `discard`: deleting each evicted file waits \
             for the disk to discard its blocks (about nine times slower for small files); \
             mount it without `discard` and trim periodically (fstrim.timer)"
        );
    }
}

struct Mount {
    point: PathBuf,
    /// Plain `discard` among its per-mount or superblock options.
    discards: bool,
}

impl Mount {
    /// One line of mountinfo (proc(5)): ID, parent ID, major:minor, root,
    /// mount point, mount options, optional fields ended by `-`, then file
    /// system type, source and superblock options.
    fn parse(line: &str) -> Option<Mount> {
        let mut fields = line.split(' ');
        let point = fields.nth(4)?;
        let mount_options = fields.next()?;
        let mut after_separator = fields.skip_while(|f| *f != "-").skip(1);
        let (_fstype, _source) = (after_separator.next()?, after_separator.next()?);
        let super_options = after_separator.next().unwrap_or("");
        let discards = mount_options
            .split(',')
            .chain(super_options.split(','))
            .any(|o| o == "discard");
        Some(Mount {
            point: PathBuf::from(unescape(point)),
            discards,
        })
    }
}

/// Mount points escape space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard,errors=remount-ro
30 22 0:26 / /srv rw,relatime shared:2 - ext4 /dev/vdb rw
31 30 0:27 / /srv/cache rw,noatime shared:3 - xfs /dev/vdc rw,attr2,discard
32 30 0:28 / /srv/cache\\040two rw,noatime - btrfs /dev/vdd rw,ssd,discard=async
33 22 0:29 / /tmp rw - tmpfs tmpfs rw,size=1024k
34 22 0:30 / /tmp rw - ext4 /dev/vde rw,discard
";

    fn check(path: &str) -> Option<PathBuf> {
        discarding_mount(MOUNTINFO, Path::new(path))
    }

    #[test]
    fn the_innermost_mount_holding_the_path_decides() {
        // The root has discard, /srv does not: /srv/data is not reported.
        assert_eq!(check("/home/ci/cache"), Some(PathBuf::from("/")));
        assert_eq!(check("/srv/data"), None);
        // Superblock options count: XFS lists discard there.
        assert_eq!(check("/srv/cache/ac"), Some(PathBuf::from("/srv/cache")));
        // A sibling whose name extends the mount point is not inside it.
        assert_eq!(check("/srv/cachey"), None);
    }

    #[test]
    fn asynchronous_discard_and_escaped_mount_points() {
        // btrfs's discard=async does not hold up the deleting thread.
        assert_eq!(check("/srv/cache two/cas"), None);
        assert_eq!(unescape(r"/a\040b\134c\011"), "/a b\\c\t");
        assert_eq!(unescape(r"/a\04"), r"/a\04");
    }

    #[test]
    fn the_last_of_two_mounts_on_one_point_hides_the_first() {
        assert_eq!(check("/tmp/x"), Some(PathBuf::from("/tmp")));
        let swapped: String = MOUNTINFO.lines().rev().map(|l| format!("{l}\n")).collect();
        assert_eq!(discarding_mount(&swapped, Path::new("/tmp/x")), None);
    }

    #[test]
    fn this_machines_mountinfo_names_a_mount_for_any_path() {
        // Whatever the options, a real mountinfo parses and its root
        // holds every path: the mount found is an ancestor of the path.
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = std::fs::canonicalize(dir.path()).unwrap();
        let mounts: Vec<Mount> = text.lines().filter_map(Mount::parse).collect();
        assert!(mounts.iter().any(|m| m.point == Path::new("/")));
        assert!(mounts.iter().any(|m| path.starts_with(&m.point)));
        if let Some(point) = discarding_mount(&text, &path) {
            assert!(path.starts_with(point));
        }
    }
}
