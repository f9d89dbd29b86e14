//! `peer sync --to s3://…`: keeps a region's newest generation in a store. Each round asks the
//! region's change detector (any of them) what changed, reads those chunks once, uploads the
//! ones whose content address is new in parallel, and publishes a manifest at this process's
//! epoch. Unchanged chunks are never uploaded again; a restart starts from the newest manifest.

use super::format::{chunk_name, ChunkName, Manifest, Writer, ZERO};
use super::{RegionStore, StoreError};
use crate::detector::ChangeDetector;
use crate::region::Source;
use bytes::Bytes;
use memsync_protocol::hash::chunk_hash;
use memsync_protocol::DirtySet;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

/// How an upload runs.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Time between detector runs.
    pub interval: Duration,
    /// Stop once a generation holding the region as the first round read it is published.
    pub once: bool,
    /// Chunk uploads in flight at once.
    pub parallel: usize,
    /// Take the region over from another peer's claim (its owner is gone).
    pub take_over: bool,
    /// Wait the whole interval between rounds even when the detector reports a write sooner:
    /// at most one generation per interval (a replica's archive, whose streams write often).
    pub settle: bool,
}

/// Why an upload stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The detector failed (e.g. the file shrank).
    #[error(transparent)]
    Detector(#[from] crate::detector::DetectorError),
    /// The region changed size while it was read.
    #[error("{0}")]
    Region(#[from] crate::region::RegionError),
}

/// What one published generation held.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Its number.
    pub generation: u64,
    /// Chunks whose content changed since the generation before.
    pub changed: u64,
    /// Bytes uploaded for it.
    pub uploaded: u64,
}

/// Uploads `source` to `store` as `me`, round after round (once with `opts.once`); `published`
/// is called after each generation is published.
pub async fn run(
    store: Arc<RegionStore>,
    source: Arc<dyn Source>,
    mut detector: Box<dyn ChangeDetector>,
    me: Writer,
    opts: &UploadOptions,
    mut published: impl FnMut(&Published),
) -> Result<(), UploadError> {
    let geom = source.geometry();
    let claim = store.claim(me, opts.take_over).await?;
    let mut generation = store.highest_generation().await?;
    let base = match store.manifest(None).await {
        Ok(m) if m.geometry == geom => Some(m),
        Ok(m) => {
            info!(
                "{}: generation {} describes {} bytes in chunks of {}; starting anew",
                store.url().region(),
                m.generation,
                m.geometry.size(),
                m.geometry.chunk_size()
            );
            None
        }
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    info!(
        "{}: epoch {} claimed; {}",
        store.url().region(),
        claim.epoch,
        match &base {
            Some(m) => format!("continuing from generation {}", m.generation),
            None => "first generation".into(),
        }
    );
    let n = geom.chunk_count();
    let mut names = base.map_or_else(|| vec![ZERO; n as usize], |m| m.chunks);
    let mut known = vec![0u64; n as usize];
    let mut dirty = DirtySet::new(n);
    // The first round reads every chunk: the store's newest generation says what is there, not
    // what the region holds now.
    dirty.insert_range(0..n);
    let mut first = true;
    let wakeup = detector.wakeup();
    loop {
        detector.collect(&known, &mut dirty)?;
        let position = detector.position();
        if !dirty.is_empty() {
            let round = dirty.take();
            let started = Instant::now();
            // The claim is checked while the chunks go up: one round trip less before the
            // manifest (spec/STORAGE.md §6).
            let (round, owned) = tokio::join!(
                upload_round(
                    &store,
                    &source,
                    &round,
                    &mut names,
                    &mut known,
                    opts.parallel,
                ),
                store.still_owned(&claim)
            );
            let (changed, uploaded) = round?;
            if changed > 0 || first {
                owned?;
                generation += 1;
                let manifest = Manifest {
                    name: store.url().name.clone(),
                    geometry: geom,
                    epoch: claim.epoch,
                    generation,
                    writer: claim.writer,
                    created_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    changed,
                    uploaded,
                    chunks: names.clone(),
                };
                store.publish(&manifest).await?;
                info!(
                    "{}: generation {generation}: {changed} chunks changed, {:.1} MiB uploaded in {:.0?}",
                    store.url().region(),
                    uploaded as f64 / (1 << 20) as f64,
                    started.elapsed()
                );
                published(&Published {
                    generation,
                    changed,
                    uploaded,
                });
            }
            detector.acknowledged(position);
        }
        if opts.once {
            return Ok(());
        }
        first = false;
        match wakeup.as_ref().filter(|_| !opts.settle) {
            Some(w) => {
                let _ = tokio::time::timeout(opts.interval, w.notified()).await;
            }
            None => tokio::time::sleep(opts.interval).await,
        }
    }
}

/// Bytes of chunks named at a time: the copies of changed chunks held at once.
const BATCH_BYTES: u64 = 64 << 20;

/// A chunk of a round as read: its index, protocol hash, name, and bytes if its name is new.
type Named = (u64, u64, ChunkName, Option<Bytes>);

/// Reads chunks `part` on every core, `before[k]` being the name chunk `part[k]` had. One whose
/// name is unchanged is not copied; one whose name is new is copied, and named and hashed again
/// from its copy, so that an object's bytes match its name while a writer goes on.
fn name_part(source: &dyn Source, part: &[u64], before: &[ChunkName]) -> Vec<Named> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let name = |(&index, old): (&u64, &ChunkName)| -> Named {
        let live = source.chunk(index);
        let hash = chunk_hash(live);
        if chunk_name(live) == *old {
            return (index, hash, *old, None);
        }
        let data = Bytes::copy_from_slice(source.chunk(index));
        (index, chunk_hash(&data), chunk_name(&data), Some(data))
    };
    let per = part.len().div_ceil(cores).max(1);
    std::thread::scope(|s| {
        let threads: Vec<_> = part
            .chunks(per)
            .zip(before.chunks(per))
            .map(|(p, b)| s.spawn(move || p.iter().zip(b).map(name).collect::<Vec<_>>()))
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a naming thread panicked"))
            .collect()
    })
}

/// Reads every chunk of `round` once and uploads those whose content address is new, at most
/// `parallel` at a time; returns the chunks changed and the bytes uploaded.
async fn upload_round(
    store: &Arc<RegionStore>,
    source: &Arc<dyn Source>,
    round: &DirtySet,
    names: &mut [ChunkName],
    known: &mut [u64],
    parallel: usize,
) -> Result<(u64, u64), UploadError> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut this_round: HashSet<ChunkName> = HashSet::new();
    let (mut changed, mut uploaded) = (0u64, 0u64);
    let indices: Vec<u64> = round.iter().collect();
    let batch = (BATCH_BYTES / source.geometry().chunk_size()).max(1) as usize;
    for part in indices.chunks(batch) {
        let named = {
            let before: Vec<ChunkName> = part.iter().map(|&i| names[i as usize]).collect();
            let (source, part) = (source.clone(), part.to_vec());
            tokio::task::spawn_blocking(move || name_part(&*source, &part, &before))
                .await
                .map_err(|e| StoreError::Config(format!("naming the chunks failed: {e}")))?
        };
        if !source.intact() {
            source.check()?;
        }
        for (index, hash, name, data) in named {
            known[index as usize] = hash;
            if name == names[index as usize] {
                continue;
            }
            names[index as usize] = name;
            changed += 1;
            let Some(data) = data.filter(|_| name != ZERO && this_round.insert(name)) else {
                continue;
            };
            while tasks.len() >= parallel.max(1) {
                join_one(&mut tasks).await?;
            }
            uploaded += data.len() as u64;
            let store = store.clone();
            tasks.spawn(async move { store.put_chunk(&name, data).await });
        }
    }
    while !tasks.is_empty() {
        join_one(&mut tasks).await?;
    }
    Ok((changed, uploaded))
}

async fn join_one(
    tasks: &mut tokio::task::JoinSet<Result<(), StoreError>>,
) -> Result<(), StoreError> {
    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(StoreError::Config(format!("an upload task failed: {e}"))),
        None => Ok(()),
    }
}
