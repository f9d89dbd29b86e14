//! Lazy (post-copy) replicas backed by userfaultfd: memory of a remote region's size, registered
//! in MISSING mode and readable at once. Arriving chunks are placed with `UFFDIO_COPY`; a fault on
//! a page not yet here becomes an urgent fetch, and a fault that can never be answered (the peer is
//! gone) gets SIGBUS, never zeros. [`serve_fault_handover`] runs the same engine for a VMM's
//! memory (Firecracker's hand-over). How the pull is ordered, read ahead and failed: README.md,
//! "How lazy replicas work".
//!
//! Rule: reading lazy memory blocks the reading thread until its chunk arrives, so read it from
//! ordinary threads, never from tasks of the runtime that drives the mount.

use crate::net::transport::PeerEndpoint;
use crate::roles::mount::{ChunkSink, MountError, Origin, RemoteRegion};
use crate::uffd::handover::{self, GuestRegionUffdMapping, HandoverError};
use crate::uffd::{
    page_size, Event, Features, FillError, Mapping, OpenFlags, RegisterMode, Uffd, UffdError,
};
use memsync_protocol::Geometry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Why a lazy region could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// Reported as "mapping memory for the lazy region: {0}".
    #[error("mapping memory for the lazy region: {0}")]
    Io(#[from] std::io::Error),
    /// The underlying error, shown as it is.
    #[error(transparent)]
    Handover(#[from] HandoverError),
    /// The memory layout given cannot be served; the reason says why.
    #[error("{0}")]
    Layout(String),
}

/// How a lazy region pulls.
#[derive(Clone, Debug)]
pub struct LazyOptions {
    /// Chunk ranges to pull first, in this order, ahead of the owner's in-order push.
    pub priority: Vec<Range<u64>>,
    /// Largest read-ahead window, in chunks (0 turns read-ahead off).
    pub readahead_max: u64,
    /// Ask for the faulting page ahead of its chunk (FETCH_PART, spec §8.7), where the peer
    /// takes it: the fault waits for one page's round trip instead of the chunk's, and the page
    /// crosses the wire once more. Off: faults wait for their whole chunk.
    pub fetch_parts: bool,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            priority: Vec::new(),
            readahead_max: 64,
            fetch_parts: true,
        }
    }
}

/// Counters of a lazy region's fault handling.
#[derive(Debug, Default)]
pub struct LazyStats {
    /// MISSING faults read from the uffd.
    pub faults: AtomicU64,
    /// Faults that had to wait for a chunk (the rest found it arriving or arrived).
    pub fetches: AtomicU64,
    /// Chunks asked for by read-ahead.
    pub readahead_chunks: AtomicU64,
    /// Threads sent SIGBUS because the chunk they needed could no longer arrive.
    pub sigbus: AtomicU64,
}

/// Region bytes `offset..offset+len` live at `addr` in the uffd's address space.
#[derive(Clone, Copy, Debug)]
struct Window {
    addr: u64,
    len: u64,
    offset: u64,
}

/// Where chunks land: page-aligned windows of an address space registered with `uffd`.
struct Target {
    uffd: Arc<Uffd>,
    geom: Geometry,
    windows: Vec<Window>,
    /// The windows are in this process (so pages already present may be overwritten with a
    /// plain copy when a chunk arrives again).
    own: bool,
    /// Pages dropped by `madvise` (UFFD_EVENT_REMOVE): a fault there gets zeros, arrivals skip it.
    removed: Mutex<HashSet<u64>>,
    /// Set when a fill failed in a way that leaves the window unusable.
    broken: Mutex<Option<String>>,
}

impl Target {
    /// The window and region offset of address `addr`.
    fn locate(&self, addr: u64) -> Option<(&Window, u64)> {
        self.windows
            .iter()
            .find(|w| (w.addr..w.addr + w.len).contains(&addr))
            .map(|w| (w, w.offset + (addr - w.addr)))
    }

    /// Address ranges (page-aligned) covering region bytes `range`, with the region offset each
    /// starts at.
    fn places(&self, range: Range<u64>) -> Vec<(u64, Range<u64>)> {
        let ps = page_size() as u64;
        let mut out = Vec::new();
        for w in &self.windows {
            let s = range.start.max(w.offset);
            let e = range.end.min(w.offset + w.len);
            if s < e {
                let s = s / ps * ps;
                let e = e.next_multiple_of(ps).min(w.offset + w.len);
                out.push((s, w.addr + (s - w.offset)..w.addr + (e - w.offset)));
            }
        }
        out
    }

    /// Places `data` (or zeros) at region offset `offset`, into the window range `dst`.
    fn fill(&self, offset: u64, dst: Range<u64>, chunk_start: u64, data: Option<&[u8]>) {
        let ps = page_size() as u64;
        let len = dst.end - dst.start;
        // Bytes for dst: the chunk's bytes from `offset`, zero-padded to whole pages.
        let padded;
        let src: Option<&[u8]> = match data {
            Some(d) => {
                let from = (offset - chunk_start) as usize;
                let avail = d.len().saturating_sub(from);
                if avail as u64 >= len {
                    Some(&d[from..from + len as usize])
                } else {
                    let mut v = vec![0u8; len as usize];
                    v[..avail].copy_from_slice(&d[from..]);
                    padded = v;
                    Some(&padded)
                }
            }
            None => None,
        };
        let removed = self.removed.lock().expect("lock");
        let mut at = 0u64;
        while at < len {
            // Skip pages the application dropped since: their content is now zeros by its will.
            let page = dst.start + at;
            if removed.contains(&page) {
                at += ps;
                continue;
            }
            let mut end = at + ps;
            while end < len && !removed.contains(&(dst.start + end)) {
                end += ps;
            }
            let r = match src {
                // SAFETY: `page..` lies in a window registered with `uffd` in MISSING mode;
                // UFFDIO_COPY fills only pages still missing, which no reader has seen (every
                // read of them waits for this fill).
                Some(s) => unsafe { self.uffd.copy(page, &s[at as usize..end as usize], true) },
                // SAFETY: as above, with the zero page.
                None => unsafe { self.uffd.zeropage(page, end - at, true) },
            };
            match r {
                Ok(()) => at = end,
                Err(FillError { done, source, .. })
                    if source.raw_os_error() == Some(libc::EEXIST) =>
                {
                    // The page at `at + done` is present: the chunk came again (the owner
                    // changed it). Overwrite it in our own memory; another process's memory
                    // is its own once a page is in (restore semantics).
                    let p = at + done as u64;
                    if self.own {
                        let bytes = src.map(|s| &s[p as usize..(p + ps) as usize]);
                        // SAFETY: the page is present in a window of our own mapping (EEXIST),
                        // so writing it cannot fault into this handler; readers of lazy memory
                        // see its bytes change as with any replica being updated.
                        unsafe {
                            let d = (dst.start + p) as *mut u8;
                            match bytes {
                                Some(b) => {
                                    std::ptr::copy_nonoverlapping(b.as_ptr(), d, ps as usize)
                                }
                                None => std::ptr::write_bytes(d, 0, ps as usize),
                            }
                        }
                    }
                    at = p + ps;
                }
                Err(e) => {
                    // ENOENT/ESRCH: the mapping or its process went away.
                    warn!("placing region bytes at {:#x}: {e}", dst.start);
                    *self.broken.lock().expect("lock") = Some(e.to_string());
                    return;
                }
            }
        }
    }
}

/// The chunk sink of a uffd-backed lazy region.
struct UffdSink {
    target: Arc<Target>,
}

impl ChunkSink for UffdSink {
    fn write_chunk(&self, index: u64, data: Option<&[u8]>) {
        let r = self.target.geom.range(index);
        let (start, end) = (r.start as u64, r.end as u64);
        for (offset, dst) in self.target.places(start..end) {
            self.target.fill(offset, dst, start, data);
        }
    }

    /// Places the whole pages the part covers (the part of the region's last page counts as
    /// whole: the rest of that page is past the region's end, zeros), which wakes the reader
    /// waiting in them before the rest of the chunk arrives.
    fn write_part(&self, index: u64, offset: u32, len: u32, data: Option<&[u8]>) {
        let ps = page_size() as u64;
        let geom = &self.target.geom;
        let start = geom.range(index).start as u64 + offset as u64;
        let end = start + len as u64;
        let first = start.next_multiple_of(ps);
        let last = if end == geom.size() {
            end
        } else {
            end / ps * ps
        };
        if first >= last {
            return;
        }
        for (at, dst) in self.target.places(first..last) {
            self.target.fill(at, dst, start, data);
        }
    }
}

/// Fault handling shared by the handler thread and the fetch tasks it spawns.
struct Handler {
    target: Arc<Target>,
    remote: Arc<RemoteRegion>,
    rt: tokio::runtime::Handle,
    /// Where SIGBUS goes when a fault comes without a thread id.
    pid: i32,
    stats: Arc<LazyStats>,
    /// Chunks with a fetch under way, and the threads waiting for each.
    inflight: Mutex<HashMap<u64, Vec<u32>>>,
    failure: Mutex<Option<MountError>>,
    touched: Mutex<(HashSet<u64>, Vec<u64>)>,
    stop: AtomicBool,
    /// [`LazyOptions::fetch_parts`].
    fetch_parts: bool,
}

impl Handler {
    /// A handler of faults in `target`, filled from `remote`; SIGBUS goes to process `pid` when a
    /// fault comes without a thread id.
    fn new(
        target: Arc<Target>,
        remote: Arc<RemoteRegion>,
        pid: i32,
        fetch_parts: bool,
    ) -> Arc<Handler> {
        Arc::new(Handler {
            target,
            remote,
            rt: tokio::runtime::Handle::current(),
            pid,
            stats: Arc::default(),
            inflight: Mutex::default(),
            failure: Mutex::default(),
            touched: Mutex::default(),
            stop: AtomicBool::new(false),
            fetch_parts,
        })
    }

    fn run(self: Arc<Self>, readahead_max: u64) {
        let mut events = Vec::new();
        let mut ra = Readahead::new(readahead_max);
        while !self.stop.load(Relaxed) {
            match self.target.uffd.poll(100) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    error!("lazy region: polling the uffd: {e}");
                    return;
                }
            }
            events.clear();
            if let Err(e) = self.target.uffd.read_events(&mut events, 64) {
                error!("lazy region: reading uffd events: {e}");
                return;
            }
            for ev in &events {
                match *ev {
                    Event::Pagefault { address, ptid, .. } => self.fault(address, ptid, &mut ra),
                    Event::Remove { start, end } => {
                        let ps = page_size() as u64;
                        let mut r = self.target.removed.lock().expect("lock");
                        r.extend((start / ps..end.div_ceil(ps)).map(|p| p * ps));
                    }
                    other => debug!("lazy region: uffd event {other:?}"),
                }
            }
        }
    }

    fn fault(self: &Arc<Self>, address: u64, ptid: u32, ra: &mut Readahead) {
        self.stats.faults.fetch_add(1, Relaxed);
        let ps = page_size() as u64;
        let page = address / ps * ps;
        let uffd = &self.target.uffd;
        let Some((_, offset)) = self.target.locate(page) else {
            warn!("fault at {address:#x} outside every region window; sending SIGBUS");
            self.sigbus(ptid);
            return;
        };
        let chunk = self.target.geom.chunk_of(offset);
        let removed = self.target.removed.lock().expect("lock").contains(&page);
        let Some(chunk) = chunk.filter(|_| !removed) else {
            // Past the region's end (the last page's tail) or dropped by the application:
            // zeros are the right contents.
            // SAFETY: `page` is in a registered window and missing (it faulted); zeros are
            // its contents by definition here.
            if let Err(e) = unsafe { uffd.zeropage(page, ps, true) } {
                if e.source.raw_os_error() != Some(libc::EEXIST) {
                    warn!("zero-filling {page:#x}: {e}");
                }
                let _ = uffd.wake(page, ps);
            }
            return;
        };
        {
            let mut t = self.touched.lock().expect("lock");
            if t.0.insert(chunk) {
                t.1.push(chunk);
            }
        }
        if let Some(range) = ra.on_fault(chunk, self.target.geom.chunk_count()) {
            // Ask only for what is still missing (the owner skips nothing it is asked for).
            let missing: Vec<u64> = range.filter(|&c| !self.remote.is_present(c)).collect();
            if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
                self.stats
                    .readahead_chunks
                    .fetch_add(missing.len() as u64, Relaxed);
                self.remote.prefetch(first..last + 1);
            }
        }
        if let Some(why) = self.target.broken.lock().expect("lock").clone() {
            warn!("fault at {address:#x} in memory that can no longer be filled ({why}); sending SIGBUS");
            self.sigbus(ptid);
            return;
        }
        let mut inflight = self.inflight.lock().expect("lock");
        if self.failure.lock().expect("lock").is_some() && !self.remote.is_present(chunk) {
            drop(inflight);
            // A thread that caught the last SIGBUS and retried: pace the answers.
            std::thread::sleep(Duration::from_millis(1));
            self.sigbus(ptid);
            let _ = uffd.wake(page, ps);
        } else if self.remote.is_present(chunk) {
            // It arrived between the fault and now; the copy woke the thread already, but a
            // wake costs little and covers every ordering.
            for (_, r) in self.target.places(self.chunk_bytes(chunk)) {
                let _ = uffd.wake(r.start, r.end - r.start);
            }
        } else if let Some(waiters) = inflight.get_mut(&chunk) {
            waiters.push(ptid);
        } else {
            inflight.insert(chunk, vec![ptid]);
            self.stats.fetches.fetch_add(1, Relaxed);
            // Asked from this thread: a task would first have to be scheduled, which takes
            // milliseconds while the background pull keeps the runtime busy. The faulting page
            // is asked for first (FETCH_PART): its reader waits for one page's round trip, not
            // the whole chunk's.
            if self.fetch_parts {
                let chunk_start = self.target.geom.range(chunk).start as u64;
                let in_chunk = offset - chunk_start;
                let len = ps.min(self.target.geom.chunk_len(chunk) as u64 - in_chunk);
                self.remote
                    .fetch_urgent_part(chunk, in_chunk as u32, len as u32);
            } else {
                self.remote.fetch_urgent(chunk..chunk + 1);
            }
            let me = self.clone();
            self.rt.spawn(async move {
                let r = me.remote.arrival(chunk..chunk + 1).await;
                if let Err(e) = &r {
                    let mut f = me.failure.lock().expect("lock");
                    if f.is_none() {
                        error!("{e}; threads touching chunks that never arrived get SIGBUS");
                        *f = Some(e.clone());
                    }
                }
                let waiters = me.inflight.lock().expect("lock").remove(&chunk);
                match r {
                    Ok(()) => {
                        for (_, r) in me.target.places(me.chunk_bytes(chunk)) {
                            let _ = me.target.uffd.wake(r.start, r.end - r.start);
                        }
                    }
                    Err(_) => {
                        for t in waiters.unwrap_or_default() {
                            me.sigbus(t);
                        }
                        // A process-directed SIGBUS may land on a thread other than the one
                        // waiting here (or on a handler that returns): wake the waiters so they
                        // retry, fault again and are answered again.
                        for (_, r) in me.target.places(me.chunk_bytes(chunk)) {
                            let _ = me.target.uffd.wake(r.start, r.end - r.start);
                        }
                    }
                }
            });
        }
    }

    fn chunk_bytes(&self, chunk: u64) -> Range<u64> {
        let r = self.target.geom.range(chunk);
        r.start as u64..r.end as u64
    }

    /// Sends SIGBUS to thread `ptid` of the faulting process, or to the process.
    fn sigbus(&self, ptid: u32) {
        self.stats.sigbus.fetch_add(1, Relaxed);
        // SAFETY: signalling a thread or process has no memory-safety effect here.
        let r = unsafe {
            if ptid != 0 {
                libc::syscall(libc::SYS_tgkill, self.pid, ptid as i32, libc::SIGBUS)
            } else {
                libc::kill(self.pid, libc::SIGBUS) as libc::c_long
            }
        };
        if r != 0 {
            warn!(
                "sending SIGBUS to {}/{ptid}: {}",
                self.pid,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Sequential-fault detection for read-ahead.
struct Readahead {
    max: u64,
    last: Option<u64>,
    window: u64,
    /// Chunks already asked for by the current streak (never asked again).
    issued: Range<u64>,
}

impl Readahead {
    const FIRST: u64 = 4;

    fn new(max: u64) -> Self {
        Readahead {
            max,
            last: None,
            window: 0,
            issued: 0..0,
        }
    }

    /// The chunks to prefetch after a fault on `chunk`, if the faults look sequential: a window
    /// beyond the fault in the direction of travel, minus what this streak already asked for.
    fn on_fault(&mut self, chunk: u64, count: u64) -> Option<Range<u64>> {
        let last = self.last.replace(chunk)?;
        if chunk == last {
            return None; // another page of the same chunk: the streak goes on
        }
        // Sequential: near the previous fault, or inside (or just past) what this streak
        // already asked for (read-ahead made the chunks in between present).
        let near =
            chunk.abs_diff(last) <= 2 || (self.issued.start..self.issued.end + 2).contains(&chunk);
        if self.max == 0 || !near {
            self.window = 0;
            self.issued = 0..0;
            return None;
        }
        self.window = if self.window == 0 {
            Self::FIRST.min(self.max)
        } else {
            (self.window * 2).min(self.max)
        };
        let want = if chunk > last {
            let s = (chunk + 1).min(count);
            s..(s + self.window).min(count)
        } else {
            chunk.saturating_sub(self.window)..chunk
        };
        let new = if self.issued.is_empty() {
            want.clone()
        } else if chunk > last {
            want.start.max(self.issued.end)..want.end
        } else {
            want.start..want.end.min(self.issued.start)
        };
        self.issued = if self.issued.is_empty() {
            want
        } else {
            self.issued.start.min(want.start)..self.issued.end.max(want.end)
        };
        (!new.is_empty()).then_some(new)
    }
}

/// Starts the fault-handling thread.
fn start_handler(h: &Arc<Handler>, readahead_max: u64) -> std::io::Result<JoinHandle<()>> {
    let h = h.clone();
    std::thread::Builder::new()
        .name("memsync-uffd".into())
        .spawn(move || h.run(readahead_max))
}

/// What a lazy region's sink factory built: the target and its memory, or why it could not.
type Built = Result<(Arc<Target>, Arc<Mapping>), String>;

/// A replica of a remote region readable before it holds the data (see the module docs).
pub struct LazyRegion {
    handler: Arc<Handler>,
    thread: Option<JoinHandle<()>>,
    map: Arc<Mapping>,
}

impl LazyRegion {
    /// Mounts region `name` from the `peer serve` at `addr` (which holds it as a replica or
    /// owner). Returns once the region's size is known; the memory is readable at once.
    pub async fn mount(
        ep: &PeerEndpoint,
        addr: SocketAddr,
        name: &str,
        opts: LazyOptions,
    ) -> Result<LazyRegion, LazyError> {
        // Faults raised inside the kernel (a read(2) whose buffer is lazy memory) are handled
        // too when we may; otherwise they fail with EFAULT.
        let flags = OpenFlags {
            user_mode_only: false,
            nonblocking: true,
        };
        let uffd = match Uffd::new(flags, Features::THREAD_ID) {
            Ok(u) => u,
            Err(_) => Uffd::new(OpenFlags::default(), Features::THREAD_ID)?,
        };
        let uffd = Arc::new(uffd);
        let made: Arc<Mutex<Option<Built>>> = Arc::default();
        let m = made.clone();
        let u = uffd.clone();
        let make_sink = Box::new(move |geom: Geometry| -> Arc<dyn ChunkSink> {
            let res = (|| {
                let map = Arc::new(Mapping::anonymous(geom.size() as usize)?);
                u.register(map.addr(), map.len() as u64, RegisterMode::MISSING)?;
                let target = Arc::new(Target {
                    uffd: u,
                    geom,
                    windows: vec![Window {
                        addr: map.addr(),
                        len: map.len() as u64,
                        offset: 0,
                    }],
                    own: true,
                    removed: Mutex::default(),
                    broken: Mutex::default(),
                });
                Ok::<_, LazyError>((target, map))
            })();
            let res = res.map_err(|e| e.to_string());
            let sink: Arc<dyn ChunkSink> = match &res {
                Ok((t, _)) => Arc::new(UffdSink { target: t.clone() }),
                Err(_) => Arc::new(NullSink),
            };
            *m.lock().expect("lock") = Some(res);
            sink
        });
        let remote = Arc::new(RemoteRegion::mount_with(ep, addr, name, make_sink).await?);
        let made = made.lock().expect("lock").take();
        let (target, map) = match made {
            Some(Ok(tm)) => tm,
            Some(Err(e)) => return Err(LazyError::Layout(e)),
            None => return Err(LazyError::Layout("the mount built no sink".into())),
        };
        for r in &opts.priority {
            remote.prefetch(r.clone());
        }
        let pid = std::process::id() as i32;
        let handler = Handler::new(target, remote, pid, opts.fetch_parts);
        let thread = Some(start_handler(&handler, opts.readahead_max)?);
        Ok(LazyRegion {
            handler,
            thread,
            map,
        })
    }

    /// The remote region's geometry.
    pub fn geometry(&self) -> Geometry {
        self.handler.target.geom
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.geometry().size() as usize
    }

    /// Whether the region has no bytes (never, for a mounted region).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The region's memory. Reading a page that has not arrived waits for it (or, if the
    /// remote peer is gone, raises SIGBUS: see the module docs). Bytes change as the owner's
    /// updates arrive.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping holds at least `len()` bytes and lives as long as `self`. Missing
        // pages read through the uffd (the read waits for the fill). Their contents are written
        // only by this region's sink, as a replica file's are by `serve`; readers must expect
        // that, as the docs say.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len()) }
    }

    /// The region's first byte; reading through it blocks until the page's chunk is here.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Copies `out.len()` bytes at `offset` into `out`, fetching missing chunks first: the way
    /// to read that reports a lost peer as an error rather than a signal.
    pub async fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), LazyError> {
        let g = self.geometry();
        if offset
            .checked_add(out.len() as u64)
            .is_none_or(|e| e > g.size())
        {
            return Err(LazyError::Layout(format!(
                "read of {} bytes at {offset} past the region's {} bytes",
                out.len(),
                g.size()
            )));
        }
        self.handler
            .remote
            .ensure(g.chunks_of_range(offset, out.len() as u64))
            .await?;
        out.copy_from_slice(&self.bytes()[offset as usize..offset as usize + out.len()]);
        Ok(())
    }

    /// Whether chunk `index` has arrived.
    pub fn is_present(&self, index: u64) -> bool {
        self.handler.remote.is_present(index)
    }

    /// Chunks not arrived yet.
    pub fn missing(&self) -> u64 {
        self.handler.remote.missing()
    }

    /// Asks for chunks `range` ahead of the background order.
    pub fn prefetch(&self, range: Range<u64>) {
        self.handler.remote.prefetch(range)
    }

    /// Chunks in the order they were first touched (faulted on) so far.
    pub fn touch_order(&self) -> Vec<u64> {
        self.handler.touched.lock().expect("lock").1.clone()
    }

    /// [`LazyRegion::touch_order`] as ranges of consecutive chunks, ready for
    /// [`LazyOptions::priority`].
    pub fn touch_priority(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for c in self.touch_order() {
            match out.last_mut() {
                Some(r) if r.end == c => r.end += 1,
                _ => out.push(c..c + 1),
            }
        }
        out
    }

    /// Valid chunk copies received on the owner's fetch lane (urgent fetches, spec §8.7).
    pub fn lane_copies(&self) -> u64 {
        self.handler.remote.lane_copies()
    }

    /// Faulting pages received ahead of their chunks on the fetch lane (valid PART frames, spec
    /// §8.7).
    pub fn lane_parts(&self) -> u64 {
        self.handler.remote.lane_parts()
    }

    /// Counters of faults, fetches and SIGBUS answers.
    pub fn stats(&self) -> &LazyStats {
        &self.handler.stats
    }

    /// Resolves once every chunk has arrived, or with the error that stopped the mount. Does
    /// not reorder the pull.
    pub async fn complete(&self) -> Result<(), LazyError> {
        Ok(self.handler.remote.complete().await?)
    }
}

impl Drop for LazyRegion {
    fn drop(&mut self) {
        self.handler.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self
            .handler
            .target
            .uffd
            .unregister(self.map.addr(), self.map.len() as u64);
    }
}

/// A sink for a mount whose memory could not be set up (the error is reported by `mount`).
struct NullSink;

impl ChunkSink for NullSink {
    fn write_chunk(&self, _: u64, _: Option<&[u8]>) {}
}

/// Serves one Firecracker-style page-fault-handler hand-over (see
/// [`crate::uffd::handover`]) received on `listener`: the VMM's guest memory regions are filled
/// from the region `origin` names (a peer, or a generation in an object store; region bytes at
/// each mapping's `offset`), lazily on faults and in the background. Returns when the VMM exits:
/// `Ok` if every fault was answered with its data, or the mount's error if the origin was lost
/// first (the VMM was sent SIGBUS, see the module docs).
pub async fn serve_fault_handover(
    listener: tokio::net::UnixListener,
    origin: Origin<'_>,
    opts: LazyOptions,
) -> Result<(), LazyError> {
    let (stream, _) = listener.accept().await?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    let got = tokio::task::spawn_blocking(move || {
        handover::recv_faults(&stream, Duration::from_secs(30)).map(|g| (g, stream))
    })
    .await
    .expect("hand-over task")?;
    let (got, _stream) = got;
    let ps = page_size() as u64;
    for m in &got.mappings {
        if m.page_size() != ps {
            return Err(LazyError::Layout(format!(
                "region at {:#x} uses {}-byte pages; this handler serves {ps}-byte pages only",
                m.base_host_virt_addr,
                m.page_size()
            )));
        }
        if !m.base_host_virt_addr.is_multiple_of(ps)
            || !m.size.is_multiple_of(ps)
            || !m.offset.is_multiple_of(ps)
        {
            return Err(LazyError::Layout(format!(
                "mapping {m:?} is not page-aligned"
            )));
        }
    }
    info!(
        "fault hand-over from pid {}: {} regions, {} bytes",
        got.pid,
        got.mappings.len(),
        got.mappings.iter().map(|m| m.size).sum::<u64>()
    );
    // The VMM ran UFFDIO_API; which features it asked for is unknown here (Firecracker asks
    // for none of THREAD_ID), so SIGBUS goes to the process.
    let uffd = Arc::new(Uffd::from_configured_fd(got.uffd, Features(0)));
    let windows: Vec<Window> = got
        .mappings
        .iter()
        .map(|m: &GuestRegionUffdMapping| Window {
            addr: m.base_host_virt_addr,
            len: m.size,
            offset: m.offset,
        })
        .collect();
    let built: Arc<Mutex<Option<Arc<Target>>>> = Arc::default();
    let b = built.clone();
    let u = uffd.clone();
    let w = windows.clone();
    let make_sink = Box::new(move |geom: Geometry| -> Arc<dyn ChunkSink> {
        let target = Arc::new(Target {
            uffd: u,
            geom,
            windows: w,
            own: false,
            removed: Mutex::default(),
            broken: Mutex::default(),
        });
        *b.lock().expect("lock") = Some(target.clone());
        Arc::new(UffdSink { target })
    });
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(got.pid)
            .ok_or_else(|| LazyError::Layout("no peer pid".into()))?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let from = origin.to_string();
    let remote = Arc::new(RemoteRegion::open(origin, make_sink).await?);
    let target = built
        .lock()
        .expect("lock")
        .take()
        .ok_or_else(|| LazyError::Layout("the mount built no sink".into()))?;
    info!(
        "{from} mounted: {} bytes, {} chunks to pull",
        remote.geometry().size(),
        remote.missing()
    );
    let size = remote.geometry().size().next_multiple_of(ps);
    if let Some(w) = windows.iter().find(|w| w.offset + w.len > size) {
        return Err(LazyError::Layout(format!(
            "a guest region needs bytes {}..{} of {from}, which has {} bytes",
            w.offset,
            w.offset + w.len,
            remote.geometry().size()
        )));
    }
    for r in &opts.priority {
        remote.prefetch(r.clone());
    }
    let handler = Handler::new(target, remote.clone(), got.pid, opts.fetch_parts);
    let thread = start_handler(&handler, opts.readahead_max)?;
    // Note the end of the pull (or its failure) while waiting for the VMM to exit.
    let r2 = remote.clone();
    let watcher = tokio::spawn(async move {
        match r2.complete().await {
            Ok(()) => info!("every chunk is in the VMM's memory"),
            Err(e) => warn!("{e}"),
        }
    });
    tokio::task::spawn_blocking(move || {
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll` reads and writes the one `pollfd`; a pidfd becomes readable when the
        // process exits.
        while unsafe { libc::poll(&mut p, 1, -1) } < 0 {}
    })
    .await
    .expect("pidfd wait");
    info!("the VMM (pid {}) exited", got.pid);
    watcher.abort();
    handler.stop.store(true, Relaxed);
    let _ = thread.join();
    let failure = handler.failure.lock().expect("lock").clone();
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
