//! The sidecar's resident set: once the proxy is ready, it gives back the pages of its own code
//! and read-only data, and keeps only what it runs from then on.
//!
//! Startup (argument parsing, the certificate request, the first xDS configuration) runs code
//! that serving never runs again, and the kernel keeps every page of it mapped, 64 KiB around
//! each page that ran. [`release`] drops the pages of the executable's read-only mappings with
//! `madvise(MADV_DONTNEED)`; the kernel maps back, from the page cache, only the pages that run
//! or are read next. Nothing is read from disk again while the file stays in the page cache.
//! The proxy releases once it is ready and its first connection arrives ([`FirstConnection`]),
//! so that the tail of startup (the ACKs, the renewal timer) has run by then, or after a while
//! without one. `scripts/symbol-order.sh` lays the serving code out at the front of the text, so
//! that what maps back sits together.
//!
//! This is the one module with `unsafe` code: `madvise` takes a raw address range and, given
//! memory the program wrote, would throw the writes away. It is only ever given whole mappings
//! of this process's own executable that are neither writable nor hold a copied-on-write
//! (anonymous) page, as `/proc/self/smaps` reports them. Such a page holds exactly the file's
//! bytes, so dropping it changes when the page is resident, never what it holds.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::mman::{MmapAdvise, madvise};
use tokio::sync::Notify;

/// Whether the proxy has accepted a connection yet: the end of startup.
#[derive(Debug, Default)]
pub struct FirstConnection {
    seen: AtomicBool,
    notify: Notify,
}

impl FirstConnection {
    /// Called for every accepted connection; only the first costs more than a load.
    pub fn accepted(&self) {
        if !self.seen.load(Ordering::Relaxed) && !self.seen.swap(true, Ordering::Relaxed) {
            // Stores a permit if nobody waits yet.
            self.notify.notify_one();
        }
    }

    /// Returns once a connection has been accepted (at once if one has).
    pub async fn wait(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.notify.notified().await;
        }
    }
}

/// One mapping of `/proc/self/smaps`, with the fields [`release`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    /// (major, minor) of the device holding the mapped file.
    dev: (u64, u64),
    inode: u64,
    rss_kb: u64,
    anonymous_kb: u64,
}

impl Mapping {
    /// Whether dropping this mapping's pages cannot change its contents: a private, read-only
    /// mapping of `file` with no copied-on-write page.
    fn is_clean_image_of(&self, file: (u64, u64, u64)) -> bool {
        (self.dev.0, self.dev.1, self.inode) == file
            && self.inode != 0
            && self.perms.starts_with('r')
            && !self.perms.contains('w')
            && self.perms.ends_with('p')
            && self.anonymous_kb == 0
    }
}

/// What [`release`] gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    /// Bytes of address space advised; of these, the resident ones were dropped.
    pub bytes: usize,
}

/// Drops the resident pages of this executable's read-only mappings (see the module's doc).
pub fn release() -> io::Result<Released> {
    let exe = fs::metadata("/proc/self/exe")?;
    let file = (dev_major(exe.dev()), dev_minor(exe.dev()), exe.ino());
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released {
        mappings: 0,
        bytes: 0,
    };
    for mapping in parse_smaps(&smaps)
        .into_iter()
        .filter(|m| m.is_clean_image_of(file))
    {
        let len = mapping.end - mapping.start;
        let Some(addr) = NonNull::new(mapping.start as *mut c_void) else {
            continue;
        };
        // SAFETY: `addr..addr + len` is one whole mapping of this executable that is not
        // writable and holds no copied-on-write page (checked above, from smaps read just now;
        // nothing in the proxy remaps or mprotects its own image). Its pages hold exactly the
        // file's bytes, so after MADV_DONTNEED every access reads the same bytes back.
        unsafe { madvise(addr, len, MmapAdvise::MADV_DONTNEED) }.map_err(io::Error::from)?;
        released.mappings += 1;
        released.bytes += len;
    }
    Ok(released)
}

/// The mappings of an smaps text; lines it does not understand are skipped.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(mapping) = parse_header(line) {
            mappings.push(mapping);
        } else if let Some(rest) = line.strip_prefix("Rss:")
            && let Some(last) = mappings.last_mut()
        {
            last.rss_kb = parse_kb(rest).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Anonymous:")
            && let Some(last) = mappings.last_mut()
        {
            // A mapping whose count cannot be read is never released.
            last.anonymous_kb = parse_kb(rest).unwrap_or(u64::MAX);
        }
    }
    mappings
}

/// `   123 kB`.
fn parse_kb(field: &str) -> Option<u64> {
    field.trim().trim_end_matches("kB").trim().parse().ok()
}

/// `start-end perms offset major:minor inode [path]`; the Anonymous count starts unknown.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    if perms.len() != 4 {
        return None;
    }
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        dev: (
            u64::from_str_radix(major, 16).ok()?,
            u64::from_str_radix(minor, 16).ok()?,
        ),
        inode,
        rss_kb: 0,
        anonymous_kb: u64::MAX,
    })
}

/// glibc's encoding of a `dev_t` (`gnu_dev_major`).
fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | u64::from((dev >> 32) as u32 & !0xfff)
}

/// glibc's encoding of a `dev_t` (`gnu_dev_minor`).
fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | u64::from((dev >> 12) as u32 & !0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00200000-00400000 r--p 00000000 fd:01 4242                       /usr/bin/mesh-proxy
Size:               2048 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw
00400000-00c00000 r-xp 00200000 fd:01 4242                       /usr/bin/mesh-proxy
Anonymous:             0 kB
00c00000-00c10000 r--p 00a00000 fd:01 4242                       /usr/bin/mesh-proxy
Anonymous:             8 kB
00c10000-00c20000 rw-p 00a10000 fd:01 4242                       /usr/bin/mesh-proxy
Anonymous:             0 kB
7f0000000000-7f0000001000 r--p 00000000 fd:01 99                  /usr/lib/other
Anonymous:             0 kB
7f0000002000-7f0000003000 r--p 00000000 00:00 0
Anonymous:             0 kB
7f0000004000-7f0000005000 r-xp 00000000 fd:01 4242               /usr/bin/mesh-proxy (deleted)
Anonymous:         bogus kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_released() {
        let mappings = parse_smaps(SMAPS);
        assert_eq!(mappings.len(), 7);
        let chosen: Vec<(usize, &str)> = mappings
            .iter()
            .filter(|m| m.is_clean_image_of((0xfd, 1, 4242)))
            .map(|m| (m.start, m.perms.as_str()))
            .collect();
        // Not the copied-on-write r--p page (RELRO), the writable data, another file, an
        // anonymous mapping, or one whose Anonymous count does not parse.
        assert_eq!(chosen, vec![(0x200000, "r--p"), (0x400000, "r-xp")]);
    }

    /// glibc's `gnu_dev_makedev`.
    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    }

    #[test]
    fn the_device_number_decodes_as_glibc_does() {
        for (major, minor) in [(0xfd, 1), (259, 0x12345), (0x1234, 7)] {
            let dev = makedev(major, minor);
            assert_eq!((dev_major(dev), dev_minor(dev)), (major, minor), "{dev:#x}");
        }
    }

    #[tokio::test]
    async fn the_first_connection_ends_the_wait_whether_it_came_before_or_after() {
        let before = FirstConnection::default();
        before.accepted();
        before.accepted();
        before.wait().await;
        let after = std::sync::Arc::new(FirstConnection::default());
        let waiter = tokio::spawn({
            let after = after.clone();
            async move { after.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        after.accepted();
        waiter.await.expect("waiter");
    }

    /// Resident kB of this executable's read-only mappings.
    fn resident_image_kb() -> u64 {
        let exe = fs::metadata("/proc/self/exe").expect("exe");
        let file = (dev_major(exe.dev()), dev_minor(exe.dev()), exe.ino());
        let smaps = fs::read_to_string("/proc/self/smaps").expect("smaps");
        parse_smaps(&smaps)
            .iter()
            .filter(|m| m.is_clean_image_of(file))
            .map(|m| m.rss_kb)
            .sum()
    }

    #[test]
    fn releasing_this_test_binary_drops_its_pages_and_keeps_it_running() {
        let before = resident_image_kb();
        let released = release().expect("release");
        let after = resident_image_kb();
        assert!(released.mappings >= 1, "{released:?}");
        assert!(released.bytes >= 4096, "{released:?}");
        // What ran since (reading smaps, this test) maps back, far less than was resident.
        assert!(
            after < before,
            "{after} kB resident after, {before} kB before"
        );
        // The code and read-only data come back from the file on the next access.
        let text = format!("{:?}", parse_smaps(SMAPS).first());
        assert!(text.contains("r--p"), "{text}");
        let again = release().expect("release again");
        assert_eq!(again.mappings, released.mappings);
    }
}
