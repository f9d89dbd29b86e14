//! The owner role of a region `peer serve` owns since a handoff (spec §8.6 step 5): on the stream
//! the handoff came on, where the old owner becomes its replica, or on a stream a peer opened with
//! MOUNT (a follower back after a broken link, or a lazy mount). Changes are found by hashing
//! DIR/NAME (the workload started by `--on-handoff` writes it, directly or through the region's
//! NBD export), or with `--owned-detector nbd` from the writes through that export alone. A
//! migration of it is asked for through serve's control socket, like a `peer sync`'s.
//!
//! Rule: once this peer handed the region on, it records the new owner at the next epoch and never
//! writes DIR/NAME again but as that owner's replica.

use super::{OwnedDetector, OwnedRegion, Stream, MOUNT_CHUNK_SHIFT};
use crate::detector::{ChangeDetector, HashDetector, Marks, MarksDetector};
use crate::nbd::exports::{HoldsWrites, Writes};
use crate::net::transport::{fail_stream, FrameReader};
use crate::region::ReplicaDir;
use crate::region::{Source, SourceFile};
use crate::roles::migrate::Freezer;
use crate::roles::owner::{drive_stream, SyncRegion, SyncStats, Turned};
use memsync_protocol::wire::{ErrorCode, WireError};
use memsync_protocol::Geometry;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// A region owned here, to stream as its owner.
pub(super) struct Lead {
    pub name: String,
    /// The ownership epoch this peer owns it at.
    pub epoch: u64,
    /// Its chunks; `None`: those of its NBD export, else 64 KiB.
    pub geometry: Option<Geometry>,
    /// Its chunks' hashes and generation as handed over here; `None`: hashed now, generation 0
    /// (the replica's STATE says which it holds).
    pub handed: Option<(Vec<u64>, u64)>,
}

/// Streams region `lead` as its owner on `send`/`reader` until the stream ends, or until it was
/// handed on: then the stream, for this peer's replica role.
pub(super) async fn lead(
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    lead: Lead,
    s: &Stream,
) -> Option<Turned> {
    let name = lead.name.clone();
    let owned = s.active.owned_export(&name);
    let mut region = match region(&lead, owned.as_ref(), s) {
        Ok(r) => r,
        Err(e) => {
            warn!("region {name}: {e}");
            fail_stream(&mut send, &mut reader, &e).await;
            return None;
        }
    };
    region.epoch = lead.epoch;
    // The peer asks for the region as a replica: it did not take a handoff back that was in
    // flight when a stream broke (it records that before it acknowledges, §8.8), so this peer
    // still owns it and its export's writes go on.
    if handing(&s.dir, &name).exists() {
        info!(
            "region {name}: the handoff to peer {} did not happen; writes go on here",
            s.who
        );
        if let Some(o) = &owned {
            o.set_writes(Writes::Open);
        }
        settled(&s.dir, &name);
    }
    let (dir, at) = (s.dir.clone(), name.clone());
    let export = owned.clone();
    // A migration records that a handoff is in flight (so a restart holds the export's writes
    // until it is settled), then holds and refuses the export's writes.
    region.freeze_also = Some(Arc::new(move || {
        Box::new(Handing {
            dir: dir.clone(),
            name: at.clone(),
            export: export.clone(),
        }) as Box<dyn Freezer>
    }));
    let mut region = region.askable();
    info!(
        "region {name}: streaming it as its owner to peer {} (epoch {}, detector {})",
        s.who,
        lead.epoch,
        region.detector.name()
    );
    let stats = SyncStats::default();
    let epoch = s.epochs.then_some(lead.epoch);
    let lane = s.lane.clone();
    match drive_stream(
        send,
        reader,
        &mut region,
        &s.opts.mounts,
        &stats,
        lane,
        epoch,
    )
    .await
    {
        Ok(Some(turned)) => {
            // The peer owns it now: no OPEN of this peer's epoch may write it again.
            if let Err(e) = s.active.policy.handed_away(&name, &s.who, lead.epoch) {
                warn!("region {name}: recording its new owner: {e}");
            }
            s.active.handed_on(&name);
            settled(&s.dir, &name);
            info!(
                "region {name}: handed to peer {}; this peer replicates it from there",
                s.who
            );
            Some(turned)
        }
        Ok(None) => None,
        Err(e) => {
            info!("region {name}: the stream to peer {} ended: {e}", s.who);
            None
        }
    }
}

/// DIR/NAME, read for the owner role: its changes found by hashing it, or (`--owned-detector
/// nbd`) from the writes through its NBD export `export`.
fn region(
    lead: &Lead,
    export: Option<&Arc<OwnedRegion>>,
    s: &Stream,
) -> Result<SyncRegion, WireError> {
    let local = |e: &dyn std::fmt::Display| WireError::new(ErrorCode::LocalIo, e.to_string());
    let file = s
        .dir
        .open_existing(&lead.name)
        .map_err(|e| local(&e))?
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::NotFound,
                format!("no region named {} here", lead.name),
            )
        })?;
    let shift = lead
        .geometry
        .or(export.map(|o| o.geometry()))
        .map_or(MOUNT_CHUNK_SHIFT, |g| g.shift());
    let path = s.dir.display(&lead.name);
    let source: Arc<dyn Source> =
        Arc::new(SourceFile::from_file(file, &path, shift).map_err(|e| local(&e))?);
    let (detector, handed): (Box<dyn ChangeDetector>, _) = match (s.opts.owned_detector, export) {
        (OwnedDetector::Nbd, Some(o)) => {
            // Watched before the region is hashed: a write is in the hashes or marked. The
            // hashes of the handover would miss what the export wrote before this watch.
            let marks = Marks::new(source.geometry());
            o.watch(&marks);
            (Box::new(MarksDetector::nbd(marks, source.clone())), None)
        }
        _ => (
            Box::new(HashDetector::new(source.clone())),
            lead.handed.as_ref(),
        ),
    };
    match handed {
        Some((known, generation)) => {
            SyncRegion::with_known(source, &lead.name, detector, known.clone(), *generation)
        }
        None => SyncRegion::new(source, &lead.name, detector),
    }
    .map_err(|e| local(&e))
}

/// `DIR/.NAME.handing`: a handoff of region NAME from this peer is in flight (it exists from the
/// freeze until the handoff is settled).
pub(super) fn handing(dir: &ReplicaDir, name: &str) -> PathBuf {
    dir.path().join(format!(".{name}.handing"))
}

/// Forgets that a handoff of `name` was in flight.
pub(super) fn settled(dir: &ReplicaDir, name: &str) {
    let _ = std::fs::remove_file(handing(dir, name));
}

/// The freezer of a region this peer hands on: records the handoff in flight (on stable storage),
/// and holds, then refuses, the writes of its NBD export.
struct Handing {
    dir: Arc<ReplicaDir>,
    name: String,
    export: Option<Arc<OwnedRegion>>,
}

impl Freezer for Handing {
    fn describe(&self) -> String {
        format!(
            "region {} handed on (and its NBD export's writes)",
            self.name
        )
    }

    fn freeze(&mut self) -> std::io::Result<()> {
        if let Some(o) = &self.export {
            o.set_writes(Writes::Held);
        }
        let f = std::fs::File::create(handing(&self.dir, &self.name))?;
        f.sync_all()?;
        self.dir.sync().map_err(std::io::Error::other)
    }

    fn thaw(&mut self) -> std::io::Result<()> {
        settled(&self.dir, &self.name);
        if let Some(o) = &self.export {
            o.set_writes(Writes::Open);
        }
        Ok(())
    }

    fn handed_off(&mut self) -> std::io::Result<()> {
        if let Some(o) = &self.export {
            o.set_writes(Writes::Refused);
        }
        Ok(())
    }
}
