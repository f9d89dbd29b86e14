//! The old owner of a region as its new owner's replica (spec §8.6 step 5). After a handoff, a
//! `peer sync` or `peer migrate` that follows the region ([`SyncRegion::follow`]) answers the new
//! owner's OPEN on the same stream, or, on a new connection (it has no listener), asks for the
//! region with MOUNT and answers with the hashes of what it holds (§8.3). What it receives goes
//! into the region's file; a handoff back makes it the owner again, on the same stream.
//!
//! Rule: only the region's own file is written, only with chunks of the geometry handed over, and
//! only while this peer does not own the region: its writers stay frozen or refused until then.

use crate::net::transport::{fail_stream, FrameReader, StreamError};
use crate::region::{hash_all, open_region};
use crate::roles::owner::{SyncRegion, Turned};
use crate::roles::replica::policy::record_owned_here;
use memsync_protocol::hash::chunk_hash;
use memsync_protocol::wire::{ErrorCode, WireError};
use memsync_protocol::{Local, Replica, ReplicaEvent, ReplicaState};
use std::os::unix::fs::FileExt;
use tracing::{debug, info};

/// Follows region `r`, handed off on this stream (or, with `mount`, asks for it on a new stream),
/// until the stream ends (`None`) or the region is handed back (the stream, for the owner role).
pub(crate) async fn follow(
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    r: &mut SyncRegion,
    mount: bool,
    epochs: bool,
) -> Result<Option<Turned>, StreamError> {
    let mut replica = match mount {
        true => Replica::mount(r.name())?,
        false => Replica::new(r.owner.generation()),
    };
    let followed = receive(&mut send, &mut reader, r, &mut replica, mount, epochs).await;
    match followed {
        Ok(true) => Ok(Some((send, reader))),
        Ok(false) => {
            let _ = send.finish();
            Ok(None)
        }
        Err(StreamError::Wire(w)) => {
            fail_stream(&mut send, &mut reader, &w).await;
            Err(StreamError::Wire(w))
        }
        Err(e) => Err(e),
    }
}

/// The replica role on the stream; true once the region was handed back here.
async fn receive(
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    r: &mut SyncRegion,
    replica: &mut Replica,
    mount: bool,
    epochs: bool,
) -> Result<bool, StreamError> {
    let local = |what: &str, e: std::io::Error| {
        WireError::new(ErrorCode::LocalIo, format!("{what} the region's file: {e}"))
    };
    let path = r.follow.clone().expect("drive follows only with a file");
    let geom = *r.owner.geometry();
    let (file, size) = tokio::task::block_in_place(|| open_region(&path, true))
        .map_err(|e| WireError::new(ErrorCode::LocalIo, e.to_string()))?;
    if size != geom.size() {
        return Err(WireError::new(
            ErrorCode::Resized,
            format!(
                "{} is {size} bytes, not the {} handed over",
                path.display(),
                geom.size()
            ),
        )
        .into());
    }
    // The hashes of what the file holds, in the chunks of the new owner's OPEN: as handed over
    // on this stream, or hashed again (after following before, or in other chunks).
    let mut known = Vec::new();
    let mut chunks = geom;
    // A ZERO chunk's bytes, one chunk long.
    let mut zeros = Vec::new();
    let name = r.name().to_owned();
    r.metrics.set_state("following the new owner (replica)");
    let mut epoch = r.epoch;
    loop {
        while let Some(f) = replica.poll_transmit() {
            send.write_all(&f).await?;
        }
        let Some(frame) = reader.next().await? else {
            info!("{name}: the new owner ended the stream this peer followed it on");
            return Ok(false);
        };
        match replica.handle(&frame)? {
            ReplicaEvent::None => {}
            ReplicaEvent::Opened {
                name: opened,
                geometry,
                epoch: e,
                ..
            } => {
                if opened != name || geometry.size() != geom.size() {
                    return Err(WireError::new(
                        ErrorCode::BadGeometry,
                        format!(
                            "the new owner opened {opened} ({} bytes) on the stream of {name} \
                             ({} bytes)",
                            geometry.size(),
                            geom.size()
                        ),
                    )
                    .into());
                }
                chunks = geometry;
                zeros = vec![0; chunks.chunk_size() as usize];
                known = match (mount, geometry == geom) {
                    (false, true) => r.owner.known_hashes().to_vec(),
                    _ => tokio::task::block_in_place(|| hash_all(&chunks, r.source.bytes())),
                };
                // The new owner's epoch is past this peer's own (spec §8.8).
                epoch = match e {
                    Some(e) if e <= r.epoch => {
                        return Err(WireError::new(
                            ErrorCode::Fenced,
                            format!("epoch {e} is not past this peer's {}", r.epoch),
                        )
                        .into())
                    }
                    Some(e) => e,
                    // Where epochs are known, only an owner's OPEN carries one (a peer serving
                    // its replica copy does not): this peer follows owners only.
                    None if epochs => {
                        return Err(WireError::new(
                            ErrorCode::Forbidden,
                            format!("the peer does not own {name} (its OPEN names no epoch)"),
                        )
                        .into())
                    }
                    None => r.epoch + 1,
                };
                // After a broken link, the generation followed last (the new owner's next round
                // is past it).
                replica.set_committed(r.followed.max(replica.committed()))?;
                replica.local_state(Local::Hashes(&known))?;
                info!("{name}: following its new owner as its replica (epoch {epoch})");
            }
            ReplicaEvent::Write { index, data } => {
                let range = chunks.range(index);
                let bytes = data.unwrap_or(&zeros[..range.len()]);
                tokio::task::block_in_place(|| file.write_all_at(bytes, range.start as u64))
                    .map_err(|e| local("writing", e))?;
                known[index as usize] = chunk_hash(bytes);
            }
            ReplicaEvent::Committed { generation } => {
                debug!("{name}: generation {generation} of the new owner applied");
                r.followed = generation;
            }
            ReplicaEvent::BecameOwner { generation } => {
                if replica.state() == ReplicaState::PostCopy {
                    return Err(WireError::new(
                        ErrorCode::ProtocolViolation,
                        "this peer follows the region and takes it back only in a plain handoff \
                         (without --postcopy)",
                    )
                    .into());
                }
                // What this peer holds, and that it owns it, are on stable storage before
                // HANDOFF_ACK (spec §8.6, §8.8): restarted, it opens at its own epoch.
                tokio::task::block_in_place(|| file.sync_data())
                    .map_err(|e| local("syncing", e))?;
                tokio::task::block_in_place(|| record_owned_here(&path, &name, epoch + 1))
                    .map_err(|e| {
                        WireError::new(ErrorCode::LocalIo, format!("recording the handback: {e}"))
                    })?;
                while let Some(f) = replica.poll_transmit() {
                    send.write_all(&f).await?;
                }
                if chunks != geom {
                    known = tokio::task::block_in_place(|| r.source.hashes());
                }
                r.taken_back(generation, epoch + 1, known)?;
                info!("{name}: handed back at generation {generation}: this peer owns it again");
                return Ok(true);
            }
            ReplicaEvent::PeerError { code, reason } => {
                return Err(StreamError::Peer {
                    code,
                    reason: reason.to_owned(),
                })
            }
        }
    }
}
