//! The new owner's side of a post-copy handoff (spec/PROTOCOL.md §8.10): `peer serve` took region
//! NAME while chunks of it were still stale, and fetches them from the old owner while the region
//! is in use here. Readers and partial writers of a missing chunk wait for it (an urgent FETCH),
//! whole-chunk writes make it present at once, and every other missing chunk arrives in the
//! background.
//!
//! Rule: a chunk is shown to readers only once it is present, and a copy from the old owner never
//! lands on a present chunk. What is missing is recorded in `DIR/.NAME.postcopy` (one byte per
//! chunk) on stable storage before HANDOFF_ACK, and chunks are marked present there in batches,
//! each after an fdatasync of the region file (and at every FLUSH of the export), so a restart,
//! even after a power loss, never takes a stale chunk for a current one; what was not marked yet
//! is fetched again. While the
//! old owner is unreachable, waiting reads and writes fail once the outage tolerance has passed
//! (EIO, never zeros); they succeed again when it returns.

use crate::detector::{Marks, Watchers};
use crate::nbd::exports::{writes_pass, HoldsWrites, Writes};
use crate::net::identity::Fingerprint;
use crate::net::transport::{FrameReader, StreamError};
use crate::ops::metrics::RegionMetrics;
use crate::region::{RegionError, ReplicaDir};
use memsync_protocol::wire::{check_name, ErrorCode, Frame, WireError};
use memsync_protocol::{DirtySet, Geometry, Replica, ReplicaEvent, ReplicaState};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::info;

/// What `DIR/.NAME.postcopy` says besides its bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    /// The generation ownership moved at.
    pub generation: u64,
    /// The old owner, which holds the missing chunks.
    pub from: Fingerprint,
    /// The ownership epoch of the old owner's stream (this peer owns the next).
    pub epoch: u64,
    /// The region's geometry.
    pub geometry: Geometry,
}

const MAGIC: &str = "memsync-postcopy 1";

/// Chunks marked present in the record at a time, after one fdatasync of the region.
const MARK_BATCH: usize = 4096;

/// The record's file name for region `name`.
fn record_name(name: &str) -> String {
    format!(".{name}.postcopy")
}

/// `DIR/.NAME.postcopy`: a header line, then one byte per chunk, 1 while the chunk is missing.
struct Record {
    file: File,
    /// Where the bitmap starts.
    base: u64,
    /// Where it is, to remove it once nothing is missing.
    path: std::path::PathBuf,
}

impl Record {
    /// Writes the record of `missing` durably (a new file, synced, renamed into place, the
    /// directory synced): it exists on stable storage before HANDOFF_ACK goes out.
    fn create(
        dir: &ReplicaDir,
        name: &str,
        h: &Handover,
        missing: &DirtySet,
    ) -> Result<Record, RegionError> {
        let io = |source| RegionError::Io {
            path: dir.display(&record_name(name)),
            source,
        };
        let header = format!(
            "{MAGIC} generation {} from {} epoch {} size {} shift {}\n",
            h.generation,
            h.from,
            h.epoch,
            h.geometry.size(),
            h.geometry.shift()
        );
        let mut bytes = header.into_bytes();
        let base = bytes.len() as u64;
        bytes.extend((0..h.geometry.chunk_count()).map(|i| missing.contains(i) as u8));
        let tmp = format!("{}.tmp", record_name(name));
        let file = dir.create(&tmp)?;
        file.set_len(0).map_err(io)?;
        file.write_all_at(&bytes, 0).map_err(io)?;
        file.sync_data().map_err(io)?;
        dir.rename(&tmp, &record_name(name))?;
        dir.sync()?;
        Ok(Record {
            file,
            base,
            path: dir.display(&record_name(name)),
        })
    }

    /// Reads the record of region `name`, if there is one; an unreadable one is an error that
    /// says why (the region cannot be used until an operator decides).
    fn load(dir: &ReplicaDir, name: &str) -> Result<Option<(Record, Handover, DirtySet)>, String> {
        let path = dir.display(&record_name(name));
        let Some(mut file) = dir
            .open_existing_rw(&record_name(name))
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let bad = |why: &str| format!("{}: {why}", path.display());
        let mut bytes = Vec::new();
        // At most a header and one byte per chunk of the largest region.
        (&mut file)
            .take(512 + memsync_protocol::geometry::MAX_CHUNKS)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(&e.to_string()))?;
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no header line"))?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| bad("header not UTF-8"))?;
        let rest = header
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("not a post-copy record"))?;
        let words: Vec<&str> = rest.split_whitespace().collect();
        let field = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
                .ok_or_else(|| bad(&format!("no {key} in the header")))
        };
        let num = |key: &str| {
            field(key)?
                .parse::<u64>()
                .map_err(|_| bad(&format!("{key} is not a number")))
        };
        let geometry = Geometry::new(
            num("size")?,
            u8::try_from(num("shift")?).map_err(|_| bad("bad shift"))?,
        )
        .map_err(|e| bad(&e.to_string()))?;
        let from = Fingerprint::parse(field("from")?).map_err(|e| bad(&e.to_string()))?;
        let h = Handover {
            generation: num("generation")?,
            from,
            epoch: num("epoch")?,
            geometry,
        };
        let map = &bytes[nl + 1..];
        if map.len() as u64 != geometry.chunk_count() {
            return Err(bad(&format!(
                "{} chunk bytes for {} chunks",
                map.len(),
                geometry.chunk_count()
            )));
        }
        let mut missing = DirtySet::new(geometry.chunk_count());
        for (i, &b) in map.iter().enumerate() {
            match b {
                0 => {}
                1 => missing.insert(i as u64),
                _ => return Err(bad("a chunk byte other than 0 or 1")),
            }
        }
        let base = nl as u64 + 1;
        Ok(Some((Record { file, base, path }, h, missing)))
    }

    /// Chunk `index` is present: its bytes were written before this is.
    fn present(&self, index: u64) -> io::Result<()> {
        self.file.write_all_at(&[0], self.base + index)
    }
}

/// DIR/NAME, opened for reading and writing, and its length.
fn open(dir: &ReplicaDir, name: &str) -> Result<(File, u64), RegionError> {
    let io = |source| RegionError::Io {
        path: dir.display(name),
        source,
    };
    let file = dir
        .open_existing_rw(name)?
        .ok_or_else(|| io(io::ErrorKind::NotFound.into()))?;
    let len = file.metadata().map_err(io)?.len();
    Ok((file, len))
}

/// The names of the regions of `dir` with a post-copy record.
pub fn recorded(dir: &ReplicaDir) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| {
            let name = f.strip_prefix('.')?.strip_suffix(".postcopy")?.to_owned();
            check_name(&name).is_ok().then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// A region this peer owns since a handoff, while (post-copy) chunks may still be missing: what
/// its NBD export and its stream to the old owner share.
pub struct OwnedRegion {
    name: String,
    /// DIR/NAME, read and written with pread/pwrite.
    file: File,
    handover: Handover,
    inner: Mutex<Inner>,
    /// A chunk arrived, or the old owner's stream came or went.
    changed: Notify,
    /// Frames are queued for the stream.
    kick: Notify,
    /// How long reads and writes of a missing chunk wait while the old owner is unreachable.
    tolerance: Duration,
    next_stream: AtomicU64,
    metrics: RegionMetrics,
    /// Whether writes go through: a migration back to the old owner holds them, and refuses them
    /// once it handed the region over.
    writes: watch::Sender<Writes>,
    /// The marks of the owner streams that learn the region's changes from its writes here.
    watchers: Watchers,
}

struct Inner {
    missing: DirtySet,
    record: Option<Record>,
    /// Present here, not yet marked in the record (their bytes may not be on stable storage).
    unmarked: Vec<u64>,
    /// The stream serving the fetches now, by number, and its replica role (in PostCopy).
    stream: Option<(u64, Replica)>,
    /// Since when no stream serves the fetches.
    lost_since: Option<Instant>,
}

impl OwnedRegion {
    /// Takes over DIR/NAME after a handoff in which `replica` (in PostCopy or BecameOwner)
    /// accepted it: records what is missing durably first. Call it before HANDOFF_ACK goes out.
    pub fn take(
        dir: &ReplicaDir,
        name: &str,
        handover: Handover,
        replica: &Replica,
        tolerance: Duration,
        metrics: RegionMetrics,
    ) -> Result<Arc<Self>, RegionError> {
        let missing = replica.missing_set();
        let record = match missing.is_empty() {
            true => None,
            false => Some(Record::create(dir, name, &handover, &missing)?),
        };
        Self::new(dir, name, handover, missing, record, tolerance, metrics)
    }

    /// Region `name`, held whole here since a handoff at ownership epoch `epoch` (one that
    /// completed before this serve started): nothing to fetch, and its chunks are of `shift`.
    pub fn whole(
        dir: &ReplicaDir,
        name: &str,
        epoch: u64,
        shift: u8,
        me: Fingerprint,
        tolerance: Duration,
        metrics: RegionMetrics,
    ) -> Result<Arc<Self>, RegionError> {
        let (file, len) = open(dir, name)?;
        let geometry = Geometry::new(len, shift).map_err(|e| RegionError::Refused {
            path: dir.display(name),
            reason: e.to_string(),
        })?;
        let handover = Handover {
            generation: 0,
            from: me,
            epoch,
            geometry,
        };
        let missing = DirtySet::new(geometry.chunk_count());
        Ok(Self::build(
            file, name, handover, missing, None, tolerance, metrics,
        ))
    }

    /// The region `name` as its post-copy record left it (a restart of serve): missing chunks
    /// wait until the old owner reconnects. `None` without a record.
    pub fn reopen(
        dir: &ReplicaDir,
        name: &str,
        tolerance: Duration,
        metrics: RegionMetrics,
    ) -> Result<Option<Arc<Self>>, String> {
        let Some((record, handover, missing)) = Record::load(dir, name)? else {
            return Ok(None);
        };
        Self::new(
            dir,
            name,
            handover,
            missing,
            Some(record),
            tolerance,
            metrics,
        )
        .map(Some)
        .map_err(|e| e.to_string())
    }

    fn new(
        dir: &ReplicaDir,
        name: &str,
        handover: Handover,
        missing: DirtySet,
        record: Option<Record>,
        tolerance: Duration,
        metrics: RegionMetrics,
    ) -> Result<Arc<Self>, RegionError> {
        let (file, len) = open(dir, name)?;
        if len != handover.geometry.size() {
            return Err(RegionError::Refused {
                path: dir.display(name),
                reason: format!(
                    "holds {len} bytes, and the region taken over {}",
                    handover.geometry.size()
                ),
            });
        }
        Ok(Self::build(
            file, name, handover, missing, record, tolerance, metrics,
        ))
    }

    fn build(
        file: File,
        name: &str,
        handover: Handover,
        missing: DirtySet,
        record: Option<Record>,
        tolerance: Duration,
        metrics: RegionMetrics,
    ) -> Arc<Self> {
        let n = handover.geometry.chunk_count();
        metrics.lazy(missing.count(), n);
        let r = Arc::new(OwnedRegion {
            name: name.to_owned(),
            file,
            handover,
            inner: Mutex::new(Inner {
                // Until a stream of the old owner serves what is missing, it counts as away.
                lost_since: (!missing.is_empty()).then(Instant::now),
                missing,
                record,
                unmarked: Vec::new(),
                stream: None,
            }),
            changed: Notify::new(),
            kick: Notify::new(),
            tolerance,
            next_stream: AtomicU64::new(0),
            metrics,
            writes: watch::Sender::new(Writes::Open),
            watchers: Watchers::default(),
        });
        r.show();
        r
    }

    /// Marks of an owner stream, to be told of every write made here from now on.
    pub fn watch(&self, marks: &Arc<Marks>) {
        self.watchers.watch(marks);
    }

    /// Whether writes are refused: the region was handed back.
    pub fn refuses_writes(&self) -> bool {
        *self.writes.borrow() == Writes::Refused
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The region's geometry.
    pub fn geometry(&self) -> Geometry {
        self.handover.geometry
    }

    /// How ownership came here.
    pub fn handover(&self) -> &Handover {
        &self.handover
    }

    /// Chunks still missing.
    pub fn missing(&self) -> u64 {
        self.inner.lock().expect("owned lock").missing.count()
    }

    /// The missing chunks, for a new stream of the old owner to fetch.
    pub fn missing_set(&self) -> DirtySet {
        self.inner.lock().expect("owned lock").missing.clone()
    }

    fn show(&self) {
        let missing = self.missing();
        self.metrics.lazy_missing(missing);
        self.metrics.set_state(&match missing {
            0 => "owned here (handed over)".to_owned(),
            n => format!("owned here, post-copy: {n} chunks to fetch from the old owner"),
        });
    }

    /// Returns once every chunk of `chunks` is present, asking the old owner for the missing
    /// ones urgently; fails with EIO once no stream has served the fetches for longer than the
    /// outage tolerance.
    pub async fn ensure(&self, chunks: Range<u64>) -> io::Result<()> {
        let mut asked = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut inner = self.inner.lock().expect("owned lock");
                let Some(first) = inner
                    .missing
                    .next_set(chunks.start)
                    .filter(|&i| i < chunks.end)
                else {
                    return Ok(());
                };
                if let Some(since) = inner.lost_since {
                    if since.elapsed() >= self.tolerance {
                        return Err(io::Error::other(format!(
                            "region {}: chunk {first} is still with the old owner, unreachable \
                             for {:.0} s (the outage tolerance)",
                            self.name,
                            since.elapsed().as_secs_f64()
                        )));
                    }
                }
                if let (false, Some((_, replica))) = (asked, &mut inner.stream) {
                    let end = chunks.end.min(self.handover.geometry.chunk_count());
                    replica.fetch(first, (end - first) as u32, true);
                    asked = true;
                    self.kick.notify_one();
                }
            }
            // Woken by an arrival or a new stream (which asks again); the timeout re-checks the
            // tolerance while the old owner is away.
            if tokio::time::timeout(Duration::from_millis(500), changed)
                .await
                .is_err()
            {
                asked = false;
            }
        }
    }

    /// Returns once nothing is missing, asking for nothing (the background fetches bring it)
    /// and however long the old owner is away.
    pub async fn complete(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.missing() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Reads `buf.len()` bytes at `offset`, once the chunks under them are present.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.ensure(
            self.handover
                .geometry
                .chunks_of_range(offset, buf.len() as u64),
        )
        .await?;
        self.file.read_exact_at(buf, offset)
    }

    /// Writes `data` at `offset` as this region's owner: a chunk it covers only in part is
    /// fetched first, one it covers whole is present from now on (a copy still on its way from
    /// the old owner is dropped).
    pub async fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let chunks = self
            .handover
            .geometry
            .chunks_of_range(offset, data.len() as u64);
        if chunks.is_empty() {
            return Ok(());
        }
        let whole = |i: u64| {
            let r = self.handover.geometry.range(i);
            offset <= r.start as u64 && r.end as u64 <= end
        };
        for i in [chunks.start, chunks.end - 1] {
            if !whole(i) {
                self.ensure(i..i + 1).await?;
            }
        }
        let mut inner = loop {
            writes_pass(&self.writes).await?;
            let inner = self.inner.lock().expect("owned lock");
            // The gate may have closed between the check and the lock.
            if *self.writes.borrow() == Writes::Open {
                break inner;
            }
        };
        self.file.write_all_at(data, offset)?;
        // Marked with the write, under the lock a freeze takes: its last collection sees it.
        self.watchers.mark(offset, data.len() as u64);
        let now_present: Vec<u64> = chunks
            .filter(|&i| whole(i) && inner.missing.contains(i))
            .collect();
        for &i in &now_present {
            self.present(&mut inner, i)?;
            if let Some((_, replica)) = &mut inner.stream {
                replica.local_write(i);
            }
        }
        drop(inner);
        if !now_present.is_empty() {
            self.arrived();
        }
        Ok(())
    }

    /// Puts every write so far on stable storage (a FLUSH of the export): the region file, then
    /// the record's marks of the chunks that arrived or were written whole since the last time.
    pub fn sync(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("owned lock");
        self.checkpoint(&mut inner)
    }

    fn checkpoint(&self, inner: &mut Inner) -> io::Result<()> {
        self.file.sync_data()?;
        let Some(r) = &inner.record else {
            inner.unmarked.clear();
            return Ok(());
        };
        if inner.unmarked.is_empty() {
            return Ok(());
        }
        for &i in &inner.unmarked {
            r.present(i)?;
        }
        r.file.sync_data()?;
        inner.unmarked.clear();
        if inner.missing.is_empty() {
            // Every chunk is on stable storage: nothing is left to fetch after a restart.
            if let Some(r) = inner.record.take() {
                let _ = std::fs::remove_file(&r.path);
                info!("region {}: post-copy done, every chunk is here", self.name);
            }
        }
        Ok(())
    }

    /// Chunk `i`, whose bytes are written, is present; the record says so at the next
    /// checkpoint, which comes every [`MARK_BATCH`] chunks and when the last one arrives.
    fn present(&self, inner: &mut Inner, i: u64) -> io::Result<()> {
        inner.missing.remove(i);
        if inner.record.is_some() {
            inner.unmarked.push(i);
        }
        if inner.unmarked.len() >= MARK_BATCH || inner.missing.is_empty() {
            self.checkpoint(inner)?;
        }
        Ok(())
    }

    fn arrived(&self) {
        self.changed.notify_waiters();
        self.show();
    }

    /// Serves the fetches of the missing chunks on a stream of the old owner, whose `replica`
    /// role took the handoff (or resumed it, [`Replica::resume_postcopy`]), until nothing is
    /// missing; then ends the stream. A newer stream replaces it.
    pub async fn fetch_on(
        &self,
        mut send: quinn::SendStream,
        mut reader: FrameReader,
        replica: Replica,
    ) -> Result<(), StreamError> {
        let id = self.next_stream.fetch_add(1, Relaxed) + 1;
        {
            let mut inner = self.inner.lock().expect("owned lock");
            inner.stream = Some((id, replica));
            inner.lost_since = None;
        }
        // Waiting readers ask again on this stream.
        self.changed.notify_waiters();
        let result = self.serve_stream(id, &mut send, &mut reader).await;
        let mut inner = self.inner.lock().expect("owned lock");
        if inner.stream.as_ref().is_some_and(|(s, _)| *s == id) {
            inner.stream = None;
            if !inner.missing.is_empty() {
                inner.lost_since = Some(Instant::now());
            }
        }
        // What arrived so far need not be fetched again after a restart.
        if let Err(e) = self.checkpoint(&mut inner) {
            tracing::warn!(
                "region {}: recording the chunks that arrived: {e}",
                self.name
            );
        }
        drop(inner);
        self.show();
        result
    }

    async fn serve_stream(
        &self,
        id: u64,
        send: &mut quinn::SendStream,
        reader: &mut FrameReader,
    ) -> Result<(), StreamError> {
        let replaced = || {
            WireError::new(
                ErrorCode::RegionBusy,
                "a newer stream of the old owner took this post-copy over",
            )
        };
        loop {
            // Every frame queued goes out in one write (after the handoff, a FETCH per run of
            // missing chunks: tens of thousands of small frames).
            let (frames, done) = {
                let mut inner = self.inner.lock().expect("owned lock");
                let Some((s, replica)) = &mut inner.stream else {
                    return Err(replaced().into());
                };
                if *s != id {
                    return Err(replaced().into());
                }
                let frames: Vec<u8> = std::iter::from_fn(|| replica.poll_transmit())
                    .flatten()
                    .collect();
                (frames, replica.state() == ReplicaState::BecameOwner)
            };
            send.write_all(&frames).await?;
            if done {
                let _ = send.finish();
                // Copies still on their way are dropped; the old owner ends its side once it
                // has read the end of this one.
                let drain = async {
                    while let Ok(Some(f)) = reader.next().await {
                        let mut inner = self.inner.lock().expect("owned lock");
                        if let Some((_, replica)) = &mut inner.stream {
                            let _ = replica.handle(&f);
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
                return Ok(());
            }
            tokio::select! {
                next = reader.next() => {
                    let Some(frame) = next? else {
                        return Err(StreamError::Truncated);
                    };
                    self.on_frame(id, &frame)?;
                }
                _ = self.kick.notified() => {}
            }
        }
    }

    /// A frame of the old owner: a chunk that was missing lands, and its readers wake.
    fn on_frame(&self, id: u64, frame: &Frame<'_>) -> Result<(), StreamError> {
        let mut inner = self.inner.lock().expect("owned lock");
        let Some((s, replica)) = &mut inner.stream else {
            return Ok(());
        };
        if *s != id {
            return Ok(());
        }
        match replica.handle(frame)? {
            ReplicaEvent::Write { index, data } => {
                let local = |e: io::Error| {
                    WireError::new(ErrorCode::LocalIo, format!("writing chunk {index}: {e}"))
                };
                let r = self.handover.geometry.range(index);
                match data {
                    Some(d) => self.file.write_all_at(d, r.start as u64),
                    None => self
                        .file
                        .write_all_at(&vec![0; r.end - r.start], r.start as u64),
                }
                .map_err(local)?;
                self.present(&mut inner, index).map_err(local)?;
                drop(inner);
                self.arrived();
                Ok(())
            }
            ReplicaEvent::PeerError { code, reason } => Err(StreamError::Peer {
                code,
                reason: reason.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

impl HoldsWrites for OwnedRegion {
    fn set_writes(&self, w: Writes) {
        // Under the lock writes take, so no write is between its check and its copy.
        let _inner = self.inner.lock().expect("owned lock");
        self.writes.send_replace(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover() -> Handover {
        Handover {
            generation: 7,
            from: Fingerprint::of(b"old owner"),
            epoch: 3,
            geometry: Geometry::new(10 * 4096 + 5, 12).unwrap(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_a_damaged_one_is_refused_with_its_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ReplicaDir::open(tmp.path()).unwrap();
        let h = handover();
        let mut missing = DirtySet::new(h.geometry.chunk_count());
        missing.insert_range(2..5);
        missing.insert(10);
        let r = Record::create(&dir, "r", &h, &missing).unwrap();
        r.present(3).unwrap();
        drop(r);
        let (_, back, left) = Record::load(&dir, "r").unwrap().unwrap();
        assert_eq!(back, h);
        assert_eq!(left.iter().collect::<Vec<_>>(), [2, 4, 10]);
        assert_eq!(recorded(&dir), ["r"]);
        assert!(Record::load(&dir, "other").unwrap().is_none());

        let path = tmp.path().join(".r.postcopy");
        let good = std::fs::read(&path).unwrap();
        let nl = good.iter().position(|&b| b == b'\n').unwrap();
        let damaged = |bytes: &[u8], says: &str| {
            std::fs::write(&path, bytes).unwrap();
            let e = Record::load(&dir, "r").err().expect("refused");
            assert!(e.contains(says), "{e}");
        };
        damaged(&good[..nl + 3], "chunk bytes for 11 chunks");
        let mut two = good.clone();
        two[nl + 1] = 2;
        damaged(&two, "other than 0 or 1");
        damaged(
            b"memsync-postcopy 1 generation 7\n",
            "no size in the header",
        );
        damaged(b"something else\n", "not a post-copy record");
        damaged(b"no newline", "no header line");
        let text = String::from_utf8_lossy(&good[..nl]).replace("shift 12", "shift 40");
        damaged(format!("{text}\n").as_bytes(), "");
    }
}
