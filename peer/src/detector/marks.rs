//! Detectors fed by the writer itself: the `nbd` detector (writes made through memsync's own NBD
//! export) and the one behind the mounts `peer serve` serves (writes `serve` makes to its replica
//! files). Each write marks its chunks as it happens, so nothing is scanned and the sync loop is
//! woken at once. The marks also carry the write positions that let FLUSH wait for the replica's
//! acknowledgement.

use super::{ChangeDetector, DetectorError};
use crate::region::Source;
use memsync_protocol::{DirtySet, Geometry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Dirty marks shared by a writer (the NBD export) and the sync loop.
pub struct Marks {
    geom: Geometry,
    dirty: Mutex<DirtySet>,
    /// Writes marked so far.
    written: AtomicU64,
    /// `written` as of the last collection.
    collected: AtomicU64,
    /// Writes the replica has acknowledged.
    acked: watch::Sender<u64>,
    wake: Arc<Notify>,
}

impl Marks {
    /// No marks yet, for a region of `geom`.
    pub fn new(geom: Geometry) -> Arc<Self> {
        Arc::new(Marks {
            geom,
            dirty: Mutex::new(DirtySet::new(geom.chunk_count())),
            written: AtomicU64::new(0),
            collected: AtomicU64::new(0),
            acked: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Marks the bytes `offset..offset+len` written; returns the write's position.
    pub fn mark(&self, offset: u64, len: u64) -> u64 {
        let pos = {
            let mut d = self.dirty.lock().expect("marks lock");
            d.insert_range(self.geom.chunks_of_range(offset, len));
            self.written.fetch_add(1, Ordering::SeqCst) + 1
        };
        self.wake.notify_one();
        pos
    }

    /// Position of the latest write.
    pub fn position(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Resolves once the replica acknowledged every write up to `position`.
    pub async fn replicated(&self, position: u64) {
        let mut rx = self.acked.subscribe();
        let _ = rx.wait_for(|&a| a >= position).await;
    }

    /// Wakes the sync loop without marking anything (so it checks the region, e.g. for a
    /// changed size).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The marks of the streams that learn a file's changes from the one process writing it (the
/// mounts of a replica, the owner streams of a region owned here): each write marks them all.
/// Held weakly: a stream that ended is forgotten at the next write.
#[derive(Default)]
pub struct Watchers(Mutex<Vec<std::sync::Weak<Marks>>>);

impl Watchers {
    /// `marks` is told of every write from now on.
    pub fn watch(&self, marks: &Arc<Marks>) {
        self.0
            .lock()
            .expect("watchers lock")
            .push(Arc::downgrade(marks));
    }

    /// Calls `f` with the marks of every live watcher.
    pub fn each(&self, mut f: impl FnMut(&Marks)) {
        self.0
            .lock()
            .expect("watchers lock")
            .retain(|w| w.upgrade().map(|m| f(&m)).is_some());
    }

    /// Marks the bytes `offset..offset+len` written for every live watcher.
    pub fn mark(&self, offset: u64, len: u64) {
        self.each(|m| {
            m.mark(offset, len);
        });
    }
}

/// The detector side of [`Marks`].
pub struct MarksDetector {
    marks: Arc<Marks>,
    name: &'static str,
    /// Checked before each collection: another process may change the file's size.
    source: Arc<dyn Source>,
}

impl MarksDetector {
    /// The `nbd` detector: the marks of memsync's own NBD export of `source`.
    pub fn nbd(marks: Arc<Marks>, source: Arc<dyn Source>) -> Self {
        MarksDetector {
            marks,
            name: "nbd",
            source,
        }
    }

    /// The detector of a mount `peer serve` serves from a replica file: marks made by the
    /// streams that write `source`, which is checked for a changed size at every collection.
    pub fn replica_writes(marks: Arc<Marks>, source: Arc<dyn Source>) -> Self {
        MarksDetector {
            marks,
            name: "replica-writes",
            source,
        }
    }
}

impl ChangeDetector for MarksDetector {
    fn name(&self) -> &'static str {
        self.name
    }

    fn collect(&mut self, _known: &[u64], out: &mut DirtySet) -> Result<(), DetectorError> {
        self.source.check()?;
        let m = &self.marks;
        let mut d = m.dirty.lock().expect("marks lock");
        // Positions are taken under the lock, so every write counted is in `out`.
        m.collected
            .store(m.written.load(Ordering::SeqCst), Ordering::SeqCst);
        out.union_with(&d.take());
        Ok(())
    }

    fn wakeup(&self) -> Option<Arc<Notify>> {
        Some(self.marks.wake.clone())
    }

    fn position(&self) -> u64 {
        self.marks.collected.load(Ordering::SeqCst)
    }

    fn acknowledged(&mut self, position: u64) {
        self.marks.acked.send_if_modified(|a| {
            let newer = position > *a;
            if newer {
                *a = position;
            }
            newer
        });
    }
}
