//! `peer serve --to s3://BUCKET/ROOT`: every replica this peer holds is also kept in an object
//! store, as region ROOT/NAME, by the store's upload driver ([`crate::store::upload`]) reading the
//! replica file, so that its owner needs neither credentials nor a second upload. What changed is
//! what the region's streams wrote (their marks, as for the mounts served from it): nothing is
//! scanned. A generation is the file as its round read it: exactly the owner's last committed
//! generation when no round arrived meanwhile, else one with some of the next round's chunks
//! (which the next generation then holds whole), as `peer sync --to` of a live region is.

use super::Slot;
use crate::detector::{Marks, MarksDetector};
use crate::region::{ReplicaDir, Source, SourceFile};
use crate::store::format::Writer;
use crate::store::upload::{self, UploadError, UploadOptions};
use crate::store::{RegionStore, StoreError, StoreUrl};
use memsync_protocol::Geometry;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Where and how `serve` keeps its replicas in an object store.
pub struct Archive {
    /// The root: each region NAME is its sibling ROOT/NAME.
    root: RegionStore,
    /// This process, as the writer of every region it archives.
    me: Writer,
    opts: UploadOptions,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({})", self.root.url().region())
    }
}

impl Archive {
    /// Keeps the replicas under `root` (`s3://BUCKET[/ROOT]`), writing as the peer of
    /// `fingerprint`, a generation per `interval` at most with `parallel` chunk uploads in
    /// flight; `take_over` takes a region over from another writer's claim (that writer is gone
    /// for good). Fails unless the store answers with these credentials.
    pub async fn open(
        root: &str,
        fingerprint: [u8; 32],
        interval: Duration,
        parallel: usize,
        take_over: bool,
    ) -> Result<Archive, StoreError> {
        let root = RegionStore::open(&StoreUrl::parse_root(root)?)?;
        root.check_access().await?;
        let opts = UploadOptions {
            interval,
            once: false,
            parallel,
            take_over,
            settle: true,
        };
        let me = Writer {
            fingerprint,
            nonce: rand::random(),
        };
        Ok(Archive { root, me, opts })
    }

    /// The root, for logs.
    pub fn url(&self) -> String {
        self.root.url().region().trim_end_matches('/').to_owned()
    }
}

/// The archiving of one region, stopped when dropped.
pub(super) struct Archiving {
    geometry: Geometry,
    task: tokio::task::JoinHandle<()>,
}

impl Archiving {
    /// Whether it still archives a region of `geometry`.
    pub(super) fn covers(&self, geometry: Geometry) -> bool {
        self.geometry == geometry && !self.task.is_finished()
    }
}

impl Drop for Archiving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts archiving replica `name` of `dir`, of `geometry`, whose writes `slot` marks.
pub(super) fn start(
    archive: Arc<Archive>,
    slot: Arc<Slot>,
    dir: Arc<ReplicaDir>,
    name: &str,
    geometry: Geometry,
) -> Archiving {
    let name = name.to_owned();
    let task = tokio::spawn(async move { keep(&archive, &slot, &dir, &name, geometry).await });
    Archiving { geometry, task }
}

/// Uploads the replica until its file changes size, another writer takes the region over in
/// the store, or the task is stopped; a failing store is tried again, less and less often.
async fn keep(archive: &Archive, slot: &Slot, dir: &ReplicaDir, name: &str, geometry: Geometry) {
    let store = match archive.root.sibling(name) {
        Ok(s) => Arc::new(s),
        Err(e) => return warn!("region {name}: not archived: {e}"),
    };
    let url = store.url().region();
    let mut pause = Duration::from_secs(1);
    loop {
        // Marks first: a write is either in the file when its chunk is read or marked.
        let marks = Marks::new(geometry);
        slot.mounts.watch(&marks);
        let source = match open(dir, name, geometry) {
            Ok(s) => s,
            Err(e) => return warn!("region {name}: not archived to {url}: {e}"),
        };
        let detector = Box::new(MarksDetector::replica_writes(marks, source.clone()));
        let ran = upload::run(
            store.clone(),
            source,
            detector,
            archive.me,
            &archive.opts,
            |_| pause = Duration::from_secs(1),
        )
        .await;
        match ran {
            Ok(()) => return,
            Err(UploadError::Store(StoreError::Owned(e))) => {
                return warn!("region {name}: archiving stopped: {e}")
            }
            Err(e @ (UploadError::Region(_) | UploadError::Detector(_))) => {
                return info!(
                    "region {name}: archiving stopped until its owner opens it again: {e}"
                )
            }
            Err(e) => warn!("region {name}: archiving to {url}: {e}; trying again in {pause:?}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

/// The replica file, mapped read-only.
fn open(
    dir: &ReplicaDir,
    name: &str,
    geometry: Geometry,
) -> Result<Arc<dyn Source>, crate::region::RegionError> {
    let path = dir.display(name);
    let file = dir
        .open_existing(name)?
        .ok_or_else(|| crate::region::RegionError::Refused {
            path: path.clone(),
            reason: "is gone".into(),
        })?;
    let source = SourceFile::from_file(file, &path, geometry.shift())?;
    if source.geometry() != geometry {
        return Err(crate::region::RegionError::Resized {
            path,
            was: geometry.size(),
            now: source.geometry().size(),
        });
    }
    Ok(Arc::new(source))
}
