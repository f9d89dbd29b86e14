//! A replica's persisted state, DIR/.NAME.index: its geometry, last committed generation,
//! durability level and the hash of every chunk, so that a restarted `serve` answers OPEN without
//! reading the replica. An rkyv archive, mapped with memmap2 and validated (bytecheck) on load;
//! then trusted only as far as its checksums prove, else rebuilt from the data.
//!
//! Crash rule (DRBD's activity log, by extents of 4 MiB): an extent's *hot* flag is on stable
//! storage before any chunk in it is written; a checkpoint puts the replica's bytes on stable
//! storage, then the hashes and per-extent checksums, then clears the flags of extents that were
//! not written in the last [`COOL_AFTER`] checkpoints. On load, hot extents are rehashed from the
//! data (whatever a crash left there) and every other extent must match its checksum.
//!
//! Heating an extent costs an fdatasync before the write it precedes (and so before the ACK of
//! its round), so extents stay hot for a few checkpoints: writes scattered over the region would
//! otherwise re-heat the extents each checkpoint cooled, one sync each (`peer compare` traced
//! stalls of up to half a second to them, as DRBD keeps an LRU of active extents for the same
//! reason). A crash then rehashes what was written in the last ~30 s, not the last 5.

use super::{hash_file, io, RegionError, ReplicaDir};
use memsync_protocol::hash::{chunk_hash, ZeroHashes};
use memsync_protocol::Geometry;
use rkyv::rancor;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// The first bytes of the archive's header, and its format version.
const MAGIC: [u8; 8] = *b"msyncidx";
const FORMAT: u32 = 1;
/// An extent covers 4 MiB of the region (at least one chunk).
const EXTENT_BYTES_SHIFT: u8 = 22;
/// Most extents a sequential run marks hot ahead of itself: 64 MiB, which a crash may leave to
/// rehash beyond what was written.
const MARK_AHEAD: usize = 16;
/// Checkpoints in a row an extent must go unwritten before it cools.
const COOL_AFTER: u8 = 6;
/// How often a replica that keeps receiving checkpoints (bounds what a crash leaves to rehash).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The archived layout. Fields up to `inode` never change after the index is made; the rest are
/// updated in place at the offsets the validated archive gives.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Layout {
    magic: [u8; 8],
    format: u32,
    /// The region name (an index copied beside another replica describes another region).
    name: String,
    size: u64,
    chunk_shift: u8,
    /// An extent is `1 << extent_shift` chunks.
    extent_shift: u8,
    /// The inode of the replica file it describes (a replaced file is another file).
    inode: u64,
    /// xxh3 of the fields above.
    head_sum: u64,
    /// The last generation acknowledged.
    committed: u64,
    /// The level the ACKs of `committed` promised (0 none, 1 fsync).
    durability: u8,
    /// Per extent: 1 when chunks in it may have been written since its checksum was.
    hot: Vec<u8>,
    /// Per extent: xxh3 of its chunks' hashes.
    sums: Vec<u64>,
    /// Per chunk: its hash (memsync_protocol::hash::chunk_hash).
    hashes: Vec<u64>,
}

/// Where the mutable fields lie in the index file.
#[derive(Clone, Copy, Debug)]
struct Offsets {
    committed: u64,
    durability: u64,
    hot: u64,
    sums: u64,
    hashes: u64,
}

/// How the replica's hashes were found when it opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// From the index; `rehashed` chunks (of hot extents) were read from the data.
    Reused {
        /// Chunks read and hashed.
        rehashed: u64,
    },
    /// The index was missing or unusable (`reason`), so every chunk was hashed and it was made anew.
    Rebuilt {
        /// Why the index was not used.
        reason: String,
    },
}

/// An open replica's index.
pub struct ReplicaIndex {
    file: File,
    path: PathBuf,
    at: Offsets,
    extent_shift: u8,
    zero: ZeroHashes,
    hashes: Vec<u64>,
    /// As on stable storage (or about to be, before the next write).
    hot: Vec<bool>,
    /// Extents written since the last checkpoint.
    touched: Vec<bool>,
    /// Checkpoints in a row each hot extent went unwritten.
    unwritten: Vec<u8>,
    committed: u64,
    /// The chunk that would continue the current run of consecutive writes, and the extent
    /// the run started in.
    next_in_run: u64,
    run_from: usize,
    /// When the last checkpoint was; `None` before the first since the index was opened.
    last_checkpoint: Option<Instant>,
    /// Dropped ([`ReplicaIndex::forget`]): a write or sync of the replica failed, or the region
    /// is owned here now; nothing more is recorded and the next open rebuilds it.
    forgotten: AtomicBool,
}

/// What an index describes: the replica file (by inode), its region's name and geometry, and the
/// extent size used for it.
#[derive(Clone, Copy)]
struct Subject<'a> {
    name: &'a str,
    geom: Geometry,
    extent_shift: u8,
    inode: u64,
}

impl Subject<'_> {
    /// xxh3 of the fields an index never changes after it is made.
    fn head_sum(&self) -> u64 {
        let mut h = Xxh3::new();
        h.update(&MAGIC);
        h.update(&FORMAT.to_le_bytes());
        h.update(&(self.name.len() as u64).to_le_bytes());
        h.update(self.name.as_bytes());
        h.update(&self.geom.size().to_le_bytes());
        h.update(&[self.geom.shift(), self.extent_shift]);
        h.update(&self.inode.to_le_bytes());
        h.digest()
    }
}

/// Empties replica `name`'s index, if it has one, on stable storage: before the replica file is
/// resized or made anew, so that no crash can leave the old index beside the new bytes.
pub fn forget_index(dir: &ReplicaDir, name: &str) -> Result<(), RegionError> {
    let path = dir.display(&index_name(name));
    if let Some(f) = dir.open_existing_rw(&index_name(name))? {
        f.set_len(0).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))?;
    }
    Ok(())
}

/// The geometry replica `name`'s index records, if it has a valid index (checked no further: the
/// replica opened with it proves or rebuilds the rest).
pub fn recorded_geometry(dir: &ReplicaDir, name: &str) -> Option<Geometry> {
    let file = dir.open_existing(&index_name(name)).ok()??;
    // SAFETY: as in `parse`: DIR's own file, validated before any field is read.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let a = rkyv::access::<ArchivedLayout, rancor::Error>(&map).ok()?;
    if a.magic != MAGIC || a.format.to_native() != FORMAT || a.name.as_str() != name {
        return None;
    }
    Geometry::new(a.size.to_native(), a.chunk_shift).ok()
}

/// The index's file name for region `name` (region names never start with a dot, spec §5.3).
fn index_name(name: &str) -> String {
    format!(".{name}.index")
}

fn sum_of(hashes: &[u64]) -> u64 {
    let mut h = Xxh3::new();
    for x in hashes {
        h.update(&x.to_le_bytes());
    }
    h.digest()
}

impl ReplicaIndex {
    /// Opens the index of replica `name` (whose file is `data`, mapped at `bytes`) and returns the
    /// hash of every chunk: from the index where it proves them, else from the data (and the
    /// index is made anew). The hashes it returns describe bytes on stable storage.
    pub fn load(
        dir: &ReplicaDir,
        name: &str,
        data: &File,
        bytes: &[u8],
        geom: Geometry,
        durable: bool,
    ) -> Result<(ReplicaIndex, Loaded), RegionError> {
        let path = dir.display(&index_name(name));
        let subject = Subject {
            name,
            geom,
            extent_shift: EXTENT_BYTES_SHIFT.saturating_sub(geom.shift()),
            inode: data.metadata().map_err(io(&path))?.ino(),
        };
        let reused = match dir.create(&index_name(name)) {
            Ok(file) => Self::reuse(file, &path, &subject, data, bytes),
            Err(e) => Err(e.to_string()),
        };
        let (mut index, loaded) = match reused {
            Ok((index, rehashed)) => (index, Loaded::Reused { rehashed }),
            Err(reason) => {
                let hashes = hash_file(data, &geom, bytes);
                data.sync_data().map_err(io(&dir.display(name)))?;
                let index = Self::build(dir, &subject, hashes)?;
                (index, Loaded::Rebuilt { reason })
            }
        };
        index.set_durability(durable).map_err(io(&path))?;
        Ok((index, loaded))
    }

    /// The index in `file`, if it describes this replica and its checksums hold; hot extents are
    /// rehashed from `bytes` and checkpointed. Err: why it cannot be used.
    fn reuse(
        file: File,
        path: &std::path::Path,
        subject: &Subject,
        data: &File,
        bytes: &[u8],
    ) -> Result<(ReplicaIndex, u64), String> {
        let geom = subject.geom;
        let (mut index, sums) = Self::parse(file, path, subject)?;
        for (e, sum) in sums.iter().enumerate() {
            if !index.hot[e] && sum_of(&index.hashes[index.extent(e)]) != *sum {
                return Err(format!("extent {e}'s checksum does not match"));
            }
        }
        // Hot extents: whatever a crash left in them is what they hold now.
        let mut rehashed = 0;
        for e in 0..index.hot.len() {
            if index.hot[e] {
                let chunks = index.extent(e);
                let mut table = Vec::with_capacity(chunks.len() * 8);
                for i in chunks.clone() {
                    index.hashes[i] = chunk_hash(&bytes[geom.range(i as u64)]);
                    table.extend_from_slice(&index.hashes[i].to_le_bytes());
                }
                rehashed += chunks.len() as u64;
                let at = index.at.hashes + 8 * chunks.start as u64;
                index
                    .file
                    .write_all_at(&table, at)
                    .map_err(|e| format!("writing it: {e}"))?;
                index.touched[e] = true;
            }
        }
        if rehashed > 0 {
            index
                .checkpoint(data, true)
                .map_err(|e| format!("writing it: {e}"))?;
        }
        Ok((index, rehashed))
    }

    /// Validates the archive in `file` against this replica; returns it with its extents'
    /// checksums (not yet compared).
    fn parse(
        file: File,
        path: &std::path::Path,
        subject: &Subject,
    ) -> Result<(ReplicaIndex, Vec<u64>), String> {
        let Subject {
            name,
            geom,
            extent_shift,
            ..
        } = *subject;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len == 0 {
            return Err("there is none".into());
        }
        // SAFETY: the index is DIR's, which only this process writes; what is needed is copied
        // out of the mapping before it is dropped, and the archive is validated before any
        // field is read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
        let a = rkyv::access::<ArchivedLayout, rancor::Error>(&map)
            .map_err(|e| format!("it is not a valid index ({e})"))?;
        if a.magic != MAGIC || a.format.to_native() != FORMAT {
            return Err("it is not an index of this format".into());
        }
        if a.name.as_str() != name || a.head_sum.to_native() != subject.head_sum() {
            return Err("it describes another region, file or geometry".into());
        }
        let n = geom.chunk_count() as usize;
        let extents = n.div_ceil(1 << extent_shift);
        if a.hashes.len() != n || a.hot.len() != extents || a.sums.len() != extents {
            return Err("its tables do not match the region's geometry".into());
        }
        if a.committed.to_native() >= memsync_protocol::owner::MAX_GENERATION {
            return Err("its committed generation is out of range".into());
        }
        let base = map.as_ptr() as usize;
        let off = |p: *const u8| (p as usize - base) as u64;
        let at = Offsets {
            committed: off((&a.committed as *const rkyv::rend::u64_le).cast()),
            durability: off(&a.durability),
            hot: off(a.hot.as_slice().as_ptr()),
            sums: off(a.sums.as_slice().as_ptr().cast()),
            hashes: off(a.hashes.as_slice().as_ptr().cast()),
        };
        let index = ReplicaIndex {
            path: path.to_owned(),
            at,
            extent_shift,
            zero: ZeroHashes::new(&geom),
            hashes: a.hashes.iter().map(|h| h.to_native()).collect(),
            hot: a.hot.iter().map(|&h| h != 0).collect(),
            touched: vec![false; extents],
            unwritten: vec![0; extents],
            committed: a.committed.to_native(),
            next_in_run: u64::MAX,
            run_from: 0,
            last_checkpoint: None,
            forgotten: AtomicBool::new(false),
            file,
        };
        let sums = a.sums.iter().map(|s| s.to_native()).collect();
        drop(map);
        Ok((index, sums))
    }

    /// Writes a new index of `hashes` (which describe bytes on stable storage), replacing any old
    /// one atomically (a new file renamed over it).
    fn build(
        dir: &ReplicaDir,
        subject: &Subject,
        hashes: Vec<u64>,
    ) -> Result<ReplicaIndex, RegionError> {
        let Subject {
            name,
            geom,
            extent_shift,
            inode,
        } = *subject;
        let sums = hashes.chunks(1 << extent_shift).map(sum_of).collect();
        let extents = hashes.len().div_ceil(1 << extent_shift);
        let layout = Layout {
            magic: MAGIC,
            format: FORMAT,
            name: name.to_owned(),
            size: geom.size(),
            chunk_shift: geom.shift(),
            extent_shift,
            inode,
            head_sum: subject.head_sum(),
            committed: 0,
            durability: 0,
            hot: vec![0; extents],
            sums,
            hashes,
        };
        let path = dir.display(&index_name(name));
        let bytes = rkyv::to_bytes::<rancor::Error>(&layout).map_err(|e| RegionError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmp = format!(".{name}.index.new");
        let file = dir.create(&tmp)?;
        file.set_len(0).map_err(io(&path))?;
        file.write_all_at(&bytes, 0).map_err(io(&path))?;
        file.sync_data().map_err(io(&path))?;
        dir.rename(&tmp, &index_name(name))?;
        dir.sync()?;
        let (index, _) =
            Self::parse(file, &path, subject).map_err(|reason| RegionError::Refused {
                path: path.clone(),
                reason: format!("was written and cannot be read back: {reason}"),
            })?;
        Ok(index)
    }

    /// Stops trusting the index: emptied on stable storage, so the next open hashes the replica
    /// and makes it anew. For a replica whose write or sync failed (a failed fsync is reported
    /// once, so a later checkpoint would wrongly succeed), or whose region this peer now owns.
    pub fn forget(&self, why: &str) {
        if !self.forgotten.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "{}: dropped ({why}); the next open rehashes the replica",
                self.path.display()
            );
            if let Err(e) = self.file.set_len(0).and_then(|()| self.file.sync_data()) {
                tracing::warn!("{}: emptying it: {e}", self.path.display());
            }
        }
    }

    fn forgotten(&self) -> bool {
        self.forgotten.load(Ordering::SeqCst)
    }

    /// The chunks of extent `e`.
    fn extent(&self, e: usize) -> std::ops::Range<usize> {
        let n = self.hashes.len();
        let first = e << self.extent_shift;
        first..(first + (1 << self.extent_shift)).min(n)
    }

    /// The hash of every chunk.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// Must come before chunk `index` is written: its extent is marked hot on stable storage.
    /// A write that continues a run of consecutive chunks (a full sync goes up the region) marks,
    /// in the same sync, as many cold extents ahead as the run has crossed, up to [`MARK_AHEAD`].
    pub fn before_write(&mut self, index: u64) -> std::io::Result<()> {
        if self.forgotten() {
            return Ok(());
        }
        let e = (index >> self.extent_shift) as usize;
        if index != self.next_in_run {
            self.run_from = e;
        }
        self.next_in_run = index + 1;
        self.touched[e] = true;
        if !self.hot[e] {
            let ahead = (e - self.run_from).min(MARK_AHEAD);
            let end = (e + 1 + ahead).min(self.hot.len());
            let n = 1 + self.hot[e + 1..end].iter().take_while(|&&h| !h).count();
            self.hot[e..e + n].fill(true);
            self.file
                .write_all_at(&vec![1; n], self.at.hot + e as u64)?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Chunk `index` now holds `data` (zeros when `None`). Only in memory: its extent is hot, so
    /// the table on disk is not trusted for it until a checkpoint wrote the extent's hashes.
    pub fn written(&mut self, index: u64, data: Option<&[u8]>) {
        self.hashes[index as usize] = data.map_or_else(|| self.zero.of(index), chunk_hash);
    }

    /// The last generation acknowledged, as recorded (0 for a new index).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Generation `g` was acknowledged (recorded; on stable storage at the next checkpoint).
    pub fn set_committed(&mut self, g: u64) -> std::io::Result<()> {
        self.committed = g;
        if self.forgotten() {
            return Ok(());
        }
        self.file.write_all_at(&g.to_le_bytes(), self.at.committed)
    }

    fn set_durability(&mut self, durable: bool) -> std::io::Result<()> {
        self.file.write_all_at(&[durable as u8], self.at.durability)
    }

    /// Whether a checkpoint is due: at the first commit since the index opened (the round that
    /// reconciled the replica, often most of it), then one every [`CHECKPOINT_EVERY`].
    pub fn checkpoint_due(&self) -> bool {
        self.last_checkpoint
            .is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY)
            && self.hot.iter().any(|&h| h)
    }

    /// Puts `data` (the replica file) and then the index on stable storage, and cools the hot
    /// extents not written in the last [`COOL_AFTER`] checkpoints (all of them when `all`: a clean
    /// stop).
    pub fn checkpoint(&mut self, data: &File, all: bool) -> std::io::Result<()> {
        let all = all || self.last_checkpoint.is_none();
        self.last_checkpoint = Some(Instant::now());
        if self.forgotten() || !self.hot.iter().any(|&h| h) {
            return Ok(());
        }
        if self.touched.iter().any(|&t| t) {
            data.sync_data()?;
            for e in 0..self.hot.len() {
                if self.touched[e] {
                    let chunks = self.extent(e);
                    let table: Vec<u8> = self.hashes[chunks.clone()]
                        .iter()
                        .flat_map(|h| h.to_le_bytes())
                        .collect();
                    let at = self.at.hashes + 8 * chunks.start as u64;
                    self.file.write_all_at(&table, at)?;
                    let sum = sum_of(&self.hashes[chunks]);
                    self.file
                        .write_all_at(&sum.to_le_bytes(), self.at.sums + 8 * e as u64)?;
                }
            }
            self.file.sync_data()?;
        }
        let mut cooled = false;
        for e in 0..self.hot.len() {
            self.unwritten[e] = match self.touched[e] {
                true => 0,
                false => self.unwritten[e].saturating_add(1),
            };
            if self.hot[e] && (all || self.unwritten[e] >= COOL_AFTER) {
                self.hot[e] = false;
                self.file.write_all_at(&[0], self.at.hot + e as u64)?;
                cooled = true;
            }
        }
        if cooled {
            self.file.sync_data()?;
        }
        self.touched.fill(false);
        Ok(())
    }

    /// The index file's path, for messages.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::COOL_AFTER;
    use crate::region::{hash_all, Loaded, ReplicaDir, ReplicaFile};
    use memsync_protocol::Geometry;
    use std::os::unix::fs::FileExt;

    /// 32 extents of 1024 chunks.
    const SIZE: u64 = 128 << 20;

    fn geom() -> Geometry {
        Geometry::new(SIZE, 12).unwrap()
    }

    fn open(dir: &ReplicaDir, name: &str) -> ReplicaFile {
        ReplicaFile::open(dir, name, geom(), false).unwrap()
    }

    /// The replica's hashes equal those of its bytes.
    fn check(f: &ReplicaFile) {
        assert_eq!(f.hashes(), hash_all(&geom(), f.bytes()).as_slice());
    }

    /// A fresh replica `r` in a new directory, after one committed round.
    fn written() -> (tempfile::TempDir, ReplicaDir, ReplicaFile) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ReplicaDir::open(tmp.path()).unwrap();
        let mut f = open(&dir, "r");
        write_some(&mut f, 1);
        (tmp, dir, f)
    }

    fn write_some(f: &mut ReplicaFile, seed: u8) {
        for i in [0u64, 1, 700, 4095, 32767] {
            f.write_chunk(i, Some(&[seed ^ i as u8; 4096])).unwrap();
        }
        f.write_chunk(2, None).unwrap();
        f.commit(7).unwrap();
    }

    #[test]
    fn a_clean_stop_leaves_nothing_to_rehash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ReplicaDir::open(tmp.path()).unwrap();
        let mut f = open(&dir, "r");
        assert!(matches!(f.loaded(), Loaded::Rebuilt { reason } if reason == "there is none"));
        write_some(&mut f, 1);
        drop(f);
        let f = open(&dir, "r");
        assert_eq!(f.loaded(), &Loaded::Reused { rehashed: 0 });
        assert_eq!(f.committed(), 7);
        check(&f);
    }

    #[test]
    fn a_crash_rehashes_only_the_hot_extents() {
        // The first commit checkpoints; the next round writes chunks of extents 0 and 3...
        let (_tmp, dir, mut f) = written();
        f.write_chunk(700, Some(&[8; 4096])).unwrap();
        f.write_chunk(4095, None).unwrap();
        // ... and crashes: no checkpoint, and chunk 701 torn by a write the index never saw (its
        // extent is hot since chunk 700 was written).
        f.file.write_all_at(&[9; 100], 701 * 4096).unwrap();
        std::mem::forget(f);
        let f = open(&dir, "r");
        // Extents 0 and 3 were written since the last checkpoint: only they are rehashed.
        assert_eq!(f.loaded(), &Loaded::Reused { rehashed: 2 * 1024 });
        check(&f);
        drop(f);
        assert_eq!(open(&dir, "r").loaded(), &Loaded::Reused { rehashed: 0 });
    }

    #[test]
    fn an_extent_cools_only_after_checkpoints_without_writes() {
        // The first commit checkpointed everything cold; chunk 700 heats extent 0.
        let (_tmp, _dir, mut f) = written();
        f.write_chunk(700, Some(&[8; 4096])).unwrap();
        let ReplicaFile { index, file, .. } = &mut f;
        index.checkpoint(file, false).unwrap();
        for _ in 0..COOL_AFTER {
            assert!(
                index.hot[0],
                "cooled after fewer than {COOL_AFTER} quiet checkpoints"
            );
            index.checkpoint(file, false).unwrap();
        }
        assert!(!index.hot[0]);
        // A write in the meantime keeps it hot from then on.
        f.write_chunk(700, Some(&[9; 4096])).unwrap();
        let ReplicaFile { index, file, .. } = &mut f;
        for _ in 0..COOL_AFTER - 1 {
            index.checkpoint(file, false).unwrap();
        }
        f.write_chunk(701, Some(&[9; 4096])).unwrap();
        let ReplicaFile { index, file, .. } = &mut f;
        for _ in 0..COOL_AFTER - 1 {
            index.checkpoint(file, false).unwrap();
            assert!(index.hot[0]);
        }
    }

    /// Opens `r` after `spoil` changed its index, and expects a rebuild whose reason contains
    /// `why`, with correct hashes.
    fn rebuilt(spoil: impl FnOnce(&std::path::Path), why: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ReplicaDir::open(tmp.path()).unwrap();
        let mut f = open(&dir, "r");
        write_some(&mut f, 3);
        drop(f);
        spoil(tmp.path());
        let f = open(&dir, "r");
        match f.loaded() {
            Loaded::Rebuilt { reason } => assert!(reason.contains(why), "{reason}"),
            l => panic!("index used: {l:?}"),
        }
        check(&f);
        drop(f);
        assert_eq!(open(&dir, "r").loaded(), &Loaded::Reused { rehashed: 0 });
    }

    #[test]
    fn a_corrupt_index_is_rebuilt() {
        rebuilt(
            |d| {
                let p = d.join(".r.index");
                let mut b = std::fs::read(&p).unwrap();
                // The hash table fills most of the archive.
                let at = b.len() / 2;
                b[at] ^= 0x10;
                std::fs::write(&p, b).unwrap();
            },
            "checksum",
        );
    }

    #[test]
    fn a_truncated_index_is_rebuilt() {
        rebuilt(
            |d| {
                let p = d.join(".r.index");
                let len = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            },
            "not a valid index",
        );
    }

    #[test]
    fn a_foreign_index_is_rebuilt() {
        // Another region's index of the same geometry, copied beside this one.
        rebuilt(
            |d| {
                let dir = ReplicaDir::open(d).unwrap();
                let mut other = open(&dir, "other");
                write_some(&mut other, 5);
                drop(other);
                std::fs::copy(d.join(".other.index"), d.join(".r.index")).unwrap();
            },
            "another region",
        );
        // The replica file replaced by another one (another inode), same name and size.
        rebuilt(
            |d| {
                std::fs::copy(d.join("r"), d.join("r.copy")).unwrap();
                std::fs::rename(d.join("r.copy"), d.join("r")).unwrap();
            },
            "another region",
        );
        // Garbage where the index should be.
        rebuilt(
            |d| std::fs::write(d.join(".r.index"), vec![0xA5; 4096]).unwrap(),
            "not a valid index",
        );
    }

    #[test]
    fn a_sequential_run_marks_extents_ahead() {
        let (_tmp, dir, mut f) = written();
        // Chunks 0 to 2047 in order: extent 0 alone, then extent 1 marks extent 2 with it.
        for i in 0..2048 {
            f.write_chunk(i, Some(&[4; 4096])).unwrap();
        }
        std::mem::forget(f);
        let f = open(&dir, "r");
        assert_eq!(f.loaded(), &Loaded::Reused { rehashed: 3 * 1024 });
        check(&f);
    }

    #[test]
    fn a_replica_made_anew_or_failed_is_not_described_by_its_old_index() {
        // Deleted and created again (the new file may even get the old inode number back).
        let (tmp, dir, f) = written();
        drop(f);
        std::fs::remove_file(tmp.path().join("r")).unwrap();
        let f = open(&dir, "r");
        assert!(matches!(f.loaded(), Loaded::Rebuilt { reason } if reason == "there is none"));
        check(&f);
        // A write or sync that failed: the bytes on disk are unknown, even if a later sync
        // (which Linux then reports as clean) succeeds.
        let _ = f.failed::<()>(Err(std::io::Error::other("EIO")));
        drop(f);
        assert!(matches!(open(&dir, "r").loaded(), Loaded::Rebuilt { .. }));
    }

    #[test]
    fn another_geometry_rebuilds_the_index() {
        let (_tmp, dir, f) = written();
        drop(f);
        let g = Geometry::new(SIZE, 16).unwrap();
        let f = ReplicaFile::open(&dir, "r", g, false).unwrap();
        assert!(matches!(f.loaded(), Loaded::Rebuilt { .. }));
        assert_eq!(f.hashes(), hash_all(&g, f.bytes()).as_slice());
    }
}
