//! The replica side of `peer serve`: accepts connections from trusted peers and, for every region
//! stream they open, keeps DIR/NAME identical to the owner's region.

use crate::region::{hash_all, ReplicaFile};
use crate::transport::{fail_stream, FrameReader, PeerEndpoint, Session, StreamError};
use memsync_protocol::wire::{ErrorCode, WireError, MAX_BODY};
use memsync_protocol::{Local, Replica, ReplicaEvent};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{debug, info, warn};

/// Region names being received right now; one stream per name at a time.
type Active = Arc<Mutex<HashSet<String>>>;

/// Serves replicas into `dir` until the endpoint closes.
pub async fn serve(ep: &PeerEndpoint, dir: PathBuf) {
    let active: Active = Arc::default();
    let dir: Arc<Path> = dir.into();
    while let Some(incoming) = ep.endpoint.accept().await {
        let (dir, active) = (dir.clone(), active.clone());
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            match PeerEndpoint::accept(incoming).await {
                Ok(session) => serve_session(session, dir, active).await,
                Err(e) => warn!("connection from {addr} refused: {e}"),
            }
        });
    }
}

async fn serve_session(session: Session, dir: Arc<Path>, active: Active) {
    let addr = session.conn.remote_address();
    let who = session
        .peer_fingerprint()
        .map_or_else(|| "?".to_owned(), |f| f.to_string());
    info!("peer {who} connected from {addr}");
    loop {
        match session.conn.accept_bi().await {
            Ok((send, recv)) => {
                let (dir, active) = (dir.clone(), active.clone());
                tokio::spawn(replica_stream(send, recv, dir, active));
            }
            Err(e) => {
                info!("peer {who} at {addr} disconnected: {e}");
                return;
            }
        }
    }
}

/// Holds a region name in the active set for as long as it lives.
struct Claim {
    active: Active,
    name: String,
}

impl Claim {
    fn take(active: &Active, name: &str) -> Result<Claim, WireError> {
        if !active.lock().expect("active lock").insert(name.to_owned()) {
            return Err(WireError::new(
                ErrorCode::RegionBusy,
                format!("region {name} is already being replicated here by another stream"),
            ));
        }
        Ok(Claim {
            active: active.clone(),
            name: name.to_owned(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.active.lock().expect("active lock").remove(&self.name);
    }
}

async fn replica_stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    dir: Arc<Path>,
    active: Active,
) {
    let mut reader = FrameReader::new(recv, MAX_BODY);
    let mut claim = None;
    match receive(&mut send, &mut reader, &dir, &active, &mut claim).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(StreamError::Wire(w)) => {
            warn!("region stream closed: {w}");
            fail_stream(&mut send, &mut reader, &w).await;
        }
        Err(e) => info!("region stream ended: {e}"),
    }
}

async fn receive(
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    dir: &Path,
    active: &Active,
    claim: &mut Option<Claim>,
) -> Result<(), StreamError> {
    let mut replica = Replica::new(0);
    let mut file: Option<ReplicaFile> = None;
    loop {
        let Some(frame) = reader.next().await? else {
            return Ok(());
        };
        match replica.handle(&frame)? {
            ReplicaEvent::None => {}
            ReplicaEvent::Opened { name, geometry, .. } => {
                *claim = Some(Claim::take(active, name)?);
                // `name` passed check_name in the decoder: no separators, no leading dot.
                let path = dir.join(name);
                let f = tokio::task::block_in_place(|| ReplicaFile::open(&path, geometry))
                    .map_err(|e| WireError::new(ErrorCode::LocalIo, e.to_string()))?;
                let hashes = tokio::task::block_in_place(|| hash_all(&geometry, f.bytes()));
                replica.local_state(Local::Hashes(&hashes))?;
                info!(
                    "region {name}: {} bytes in {} chunks; reconciling",
                    geometry.size(),
                    geometry.chunk_count()
                );
                file = Some(f);
            }
            ReplicaEvent::Write { index, data } => {
                let f = file.as_mut().ok_or_else(|| {
                    WireError::new(ErrorCode::Internal, "write before the region opened")
                })?;
                f.write_chunk(index, data);
            }
            ReplicaEvent::Committed { generation } => {
                debug!("generation {generation} applied");
            }
            ReplicaEvent::BecameOwner { .. } => {
                return Err(WireError::new(
                    ErrorCode::ProtocolViolation,
                    "`peer serve` does not take ownership of regions",
                )
                .into());
            }
            ReplicaEvent::PeerError { code, reason } => {
                return Err(StreamError::Peer {
                    code,
                    reason: reason.to_owned(),
                });
            }
        }
        while let Some(f) = replica.poll_transmit() {
            send.write_all(&f).await?;
        }
    }
}
