//! The `inotify` detector, for files changed with write(2) (a database's data file, a log): it
//! hashes the region only after the kernel reported IN_MODIFY on the file (inotify(7)), so an idle
//! region is never hashed. Writes through a shared writable mapping raise no IN_MODIFY, msync(2)
//! included (the study's finding, and this kernel's: see the tests), so at every collection the
//! detector also looks for such a mapping (every process's /proc/PID/maps: a few milliseconds for
//! a hundred processes), and while one exists it warns and hashes at every interval, as the
//! `hash` detector does.
//!
//! Rule: a collection reads every queued event itself before it decides, and the kernel queues
//! IN_MODIFY before write(2) returns, so a write that returned before a collection (a writer
//! frozen for a handoff, say) is always seen by it. A watcher thread only polls, to wake the sync
//! loop early; after each collection it waits nine times as long as the collection took before it
//! may wake the loop again, so that writes coming without pause cost at most a tenth of a core in
//! early hashing (`peer compare` found them hashing the file back to back).

use super::{ChangeDetector, DetectorError, HashDetector};
use crate::region::Source;
use memsync_protocol::DirtySet;
use rustix::fs::inotify;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// What the watcher thread and the detector share.
struct Shared {
    stop: AtomicBool,
    wake: Arc<Notify>,
    /// Nanoseconds the watcher waits after a collection before it polls again.
    pause_ns: AtomicU64,
}

/// The `inotify` detector over a file region.
pub struct InotifyDetector {
    scan: HashDetector,
    path: PathBuf,
    /// The file's device and inode, to find its mappings in /proc.
    id: (u64, u64),
    shared: Arc<Shared>,
    fd: Arc<OwnedFd>,
    watcher: std::thread::Thread,
    /// The file may have changed before the watch: the first collection hashes it.
    first: bool,
    /// A process that maps the file shared and writable, as last looked for.
    mapped_by: Option<u32>,
    scans: Arc<AtomicU64>,
}

impl InotifyDetector {
    /// Watches file `path`, whose bytes `source` maps.
    pub fn new(source: Arc<dyn Source>, path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let flags = inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK;
        let fd = Arc::new(inotify::init(flags)?);
        inotify::add_watch(&*fd, path, inotify::WatchFlags::MODIFY)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            pause_ns: AtomicU64::new(0),
        });
        let (fd2, shared2) = (fd.clone(), shared.clone());
        let watcher = std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || watch(&fd2, &shared2))?
            .thread()
            .clone();
        Ok(InotifyDetector {
            scan: HashDetector::new(source),
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
            shared,
            fd,
            watcher,
            first: true,
            mapped_by: None,
            scans: Arc::default(),
        })
    }

    /// Counts the scans made (each hashes the whole region).
    pub fn scans(&self) -> Arc<AtomicU64> {
        self.scans.clone()
    }

    /// Reads every queued event: true if the file was modified. Then lets the watcher poll again.
    fn modified(&mut self) -> Result<bool, DetectorError> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&*self.fd, &mut buf);
        let mut modified = false;
        loop {
            match events.next() {
                Ok(e) => modified |= e.events().contains(inotify::ReadFlags::MODIFY),
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(DetectorError::Inotify(e.into())),
            }
        }
        self.watcher.unpark();
        Ok(modified)
    }

    /// Looks again whether a process maps the file shared and writable; warns when that starts
    /// and tells when it ends.
    fn check_mapped(&mut self) {
        let now = shared_writable_mapper(self.id);
        match (self.mapped_by, now) {
            (None, Some(pid)) => warn!(
                "{} is mapped shared and writable by process {pid}: writes through a mapping \
                 raise no inotify event, so it is hashed at every interval until it is unmapped",
                self.path.display()
            ),
            (Some(_), None) => info!(
                "{} is no longer mapped writable: hashed again only when inotify reports a write",
                self.path.display()
            ),
            _ => {}
        }
        self.mapped_by = now;
    }
}

impl ChangeDetector for InotifyDetector {
    fn name(&self) -> &'static str {
        "inotify"
    }

    fn collect(&mut self, known: &[u64], out: &mut DirtySet) -> Result<(), DetectorError> {
        let start = std::time::Instant::now();
        self.check_mapped();
        let changed = self.modified()? | std::mem::take(&mut self.first);
        if !changed && self.mapped_by.is_none() {
            return Ok(());
        }
        self.scans.fetch_add(1, Ordering::Relaxed);
        let scanned = self.scan.collect(known, out);
        let pause = start.elapsed() * 9;
        (self.shared.pause_ns).store(pause.as_nanos() as u64, Ordering::Relaxed);
        scanned
    }

    fn wakeup(&self) -> Option<Arc<Notify>> {
        Some(self.shared.wake.clone())
    }
}

impl Drop for InotifyDetector {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.watcher.unpark();
    }
}

/// The watcher thread: when events are queued, wakes the sync loop, then waits until a
/// collection read them (or a second passed) before it polls again. It reads nothing itself.
fn watch(fd: &OwnedFd, shared: &Shared) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    while !shared.stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(n) if n > 0 => {
                shared.wake.notify_one();
                std::thread::park_timeout(Duration::from_secs(1));
                let pause = Duration::from_nanos(shared.pause_ns.load(Ordering::Relaxed));
                let until = std::time::Instant::now() + pause.min(Duration::from_secs(10));
                while !shared.stop.load(Ordering::SeqCst) {
                    match until.checked_duration_since(std::time::Instant::now()) {
                        Some(left) if !left.is_zero() => std::thread::park_timeout(left),
                        _ => break,
                    }
                }
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                // The collections still read the events; only the early wakeups are lost.
                warn!("inotify: polling: {e}; changes are seen at the next interval");
                return;
            }
        }
    }
}

/// A process that maps the file `(device, inode)` shared and writable (a `rw?s` line of
/// /proc/PID/maps naming it), if any.
fn shared_writable_mapper((dev, ino): (u64, u64)) -> Option<u32> {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let want_dev = format!("{major:02x}:{minor:02x}");
    let want_ino = ino.to_string();
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that ended, or one not ours to read: nothing to learn from it.
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        let found = maps.lines().any(|l| {
            let mut f = l.split_ascii_whitespace();
            let (_, perms, _, dev, inode) = (f.next(), f.next(), f.next(), f.next(), f.next());
            let perms = perms.unwrap_or("").as_bytes();
            perms.len() == 4
                && perms[1] == b'w'
                && perms[3] == b's'
                && dev == Some(want_dev.as_str())
                && inode == Some(want_ino.as_str())
        });
        if found {
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::SourceFile;
    use std::io::Write;

    /// Whether an IN_MODIFY is waiting on `fd` (non-blocking).
    fn modified(fd: &OwnedFd) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut r = inotify::Reader::new(fd, &mut buf);
        let mut any = false;
        while let Ok(e) = r.next() {
            any |= e.events().contains(inotify::ReadFlags::MODIFY);
        }
        any
    }

    /// The study's finding, on this kernel: a write through a MAP_SHARED mapping, msync(2)
    /// included, raises no IN_MODIFY; write(2) does.
    #[test]
    fn writes_through_a_shared_mapping_raise_no_in_modify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK).unwrap();
        inotify::add_watch(&fd, &path, inotify::WatchFlags::MODIFY).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // SAFETY: a file of this test only, mapped while it lives.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        map[100] = 7;
        map[40000] = 9;
        map.flush().unwrap();
        assert!(!modified(&fd), "a mapped write raised IN_MODIFY");
        assert_eq!(std::fs::read(&path).unwrap()[40000], 9);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert!(modified(&fd), "write(2) raised no IN_MODIFY");
    }

    #[test]
    fn idle_costs_no_scan_writes_do_and_a_writable_mapping_falls_back_to_scanning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 4 << 16]).unwrap();
        let source: Arc<dyn Source> = Arc::new(SourceFile::open(&path, 16).unwrap());
        let mut d = InotifyDetector::new(source.clone(), &path).unwrap();
        let scans = d.scans();
        let mut known = source.hashes();
        let collect = |d: &mut InotifyDetector, known: &mut Vec<u64>| {
            let mut out = DirtySet::new(4);
            d.collect(known, &mut out).unwrap();
            *known = source.hashes();
            out.iter().collect::<Vec<_>>()
        };
        // The first collect scans (the file may have changed before the watch); then idle: none.
        assert_eq!(collect(&mut d, &mut known), Vec::<u64>::new());
        for _ in 0..5 {
            assert_eq!(collect(&mut d, &mut known), Vec::<u64>::new());
        }
        assert_eq!(scans.load(Ordering::Relaxed), 1);
        // write(2) of chunk 2: the thread wakes the loop, and one scan finds it.
        let wake = d.wakeup().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"abc", 2 << 16).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), wake.notified())
                    .await
                    .expect("no wakeup after write(2)")
            });
        assert_eq!(collect(&mut d, &mut known), vec![2]);
        assert_eq!(scans.load(Ordering::Relaxed), 2);
        // A shared writable mapping (here this process's own): every collect scans, and a write
        // through it is found although no event came.
        // SAFETY: a file of this test only, mapped while it lives.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
        map[(1 << 16) + 5] = 1;
        assert_eq!(collect(&mut d, &mut known), vec![1]);
        assert_eq!(d.mapped_by, Some(std::process::id()));
        let before = scans.load(Ordering::Relaxed);
        assert_eq!(collect(&mut d, &mut known), Vec::<u64>::new());
        assert_eq!(scans.load(Ordering::Relaxed), before + 1);
        // Unmapped: idle again once the next look finds no mapping.
        drop(map);
        collect(&mut d, &mut known);
        let before = scans.load(Ordering::Relaxed);
        assert_eq!(collect(&mut d, &mut known), Vec::<u64>::new());
        assert_eq!(scans.load(Ordering::Relaxed), before);
    }
}
