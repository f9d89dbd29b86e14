//! Region stores: the owner's view of a file it replicates (a shared, read-only mapping, so writes
//! by any process through the page cache are visible) and the replica's copy DIR/NAME (written
//! with pwrite, read through a shared mapping, so local readers see each update as it lands).
//! Every mapping of a file that another process could truncate is guarded ([`guard`]): a file
//! that shrinks is a [`RegionError::Resized`], never a SIGBUS.

mod dir;
pub mod guard;
mod index;
mod journal;
mod promotion;

pub use dir::{file_type_name, ReplicaDir};
pub use index::{forget_index, Loaded, ReplicaIndex};
pub use journal::{pending_journals, recover, Journal, Recovered};
pub use promotion::Promotion;

use guard::Guard;
use memmap2::{Mmap, MmapMut, MmapOptions};
use memsync_protocol::hash::{chunk_hash, hash_chunks, is_zero, ZeroHashes};
use memsync_protocol::{DirtySet, Geometry};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a region could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Reported as "{path}: {source}".
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What failed underneath.
        source: std::io::Error,
    },
    /// Reported as "{path} is empty; a region needs at least one byte".
    #[error("{path} is empty; a region needs at least one byte")]
    Empty {
        /// The file or directory concerned.
        path: PathBuf,
    },
    /// Reported as "{path}: {reason}".
    #[error("{path}: {reason}")]
    Geometry {
        /// The file or directory concerned.
        path: PathBuf,
        /// The reason given.
        reason: String,
    },
    /// Reported as "{path} changed size from {was} to {now} bytes while being synced; resizing a region is not supported yet: restart the sync to replicate the new size".
    #[error("{path} changed size from {was} to {now} bytes while being synced; resizing a region is not supported yet: restart the sync to replicate the new size")]
    Resized {
        /// The file or directory concerned.
        path: PathBuf,
        /// The size when the sync started.
        was: u64,
        /// The size now.
        now: u64,
    },
    /// Reported as "{path} {reason}".
    #[error("{path} {reason}")]
    Refused {
        /// The file or directory concerned.
        path: PathBuf,
        /// The reason given.
        reason: String,
    },
    /// Reported as "{path}: {source}".
    #[error("{path}: {source}")]
    Guard {
        /// The file or directory concerned.
        path: PathBuf,
        /// What failed underneath.
        source: guard::TooManyGuards,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegionError + '_ {
    move |source| RegionError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The bytes of a region an owner replicates: a mapped file, an application's tracked memory, an
/// NBD export's backing store. Readers copy and hash these bytes while writers may be changing
/// them; a racing write is caught by the next detector run.
pub trait Source: Send + Sync {
    /// The region's geometry.
    fn geometry(&self) -> Geometry;
    /// The whole region, `geometry().size()` bytes.
    fn bytes(&self) -> &[u8];
    /// Fails when the region can no longer be read as it was opened (a file that changed size).
    fn check(&self) -> Result<(), RegionError> {
        Ok(())
    }
    /// Whether every byte read so far was the region's: false once a file shrank under a read
    /// (the bytes read since are zeros it does not hold; `check` says why). One atomic load,
    /// for the hot path.
    fn intact(&self) -> bool {
        true
    }
    /// The bytes of chunk `index`.
    fn chunk(&self, index: u64) -> &[u8] {
        &self.bytes()[self.geometry().range(index)]
    }
    /// The hash of every chunk as the region holds it now.
    fn hashes(&self) -> Vec<u64> {
        hash_all(&self.geometry(), self.bytes())
    }
}

/// A shared mapping of a file, guarded against the file shrinking under it.
pub struct MappedFile<M> {
    // Declared first, so it is dropped (unregistered) before the mapping is unmapped.
    guard: Guard,
    map: M,
}

impl MappedFile<Mmap> {
    /// Maps the first `len` bytes of `file` shared and read-only.
    pub fn read_only(file: &File, len: u64, path: &Path) -> Result<Self, RegionError> {
        // SAFETY: the mapping is shared with writers in other processes, which is the point: we
        // only copy and hash its bytes, and a shrinking file is caught by the guard.
        let map = unsafe { MmapOptions::new().len(len as usize).map(file) }.map_err(io(path))?;
        Self::guarded(map, path)
    }
}

impl MappedFile<MmapMut> {
    /// Maps the first `len` bytes of `file` shared and writable.
    pub fn writable(file: &File, len: u64, path: &Path) -> Result<Self, RegionError> {
        // SAFETY: as for `read_only`; writes go through `&mut` of the owner of this mapping.
        let map =
            unsafe { MmapOptions::new().len(len as usize).map_mut(file) }.map_err(io(path))?;
        Self::guarded(map, path)
    }

    /// msync(2) of the whole mapping: written bytes are durable once it returns.
    pub fn flush(&self) -> std::io::Result<()> {
        self.map.flush()
    }
}

impl<M: std::ops::Deref<Target = [u8]>> MappedFile<M> {
    fn guarded(map: M, path: &Path) -> Result<Self, RegionError> {
        let guard = Guard::new(map.as_ptr(), map.len()).map_err(|source| RegionError::Guard {
            path: path.to_owned(),
            source,
        })?;
        Ok(MappedFile { guard, map })
    }

    /// See [`Guard::poisoned`].
    pub fn poisoned(&self) -> bool {
        self.guard.poisoned()
    }
}

impl<M: std::ops::Deref<Target = [u8]>> std::ops::Deref for MappedFile<M> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl<M: std::ops::DerefMut<Target = [u8]>> std::ops::DerefMut for MappedFile<M> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// The size of a regular file or block device; anything else cannot be a region.
pub fn region_size(file: &File, path: &Path) -> Result<u64, RegionError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata().map_err(io(path))?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(meta.len());
    }
    if kind.is_block_device() {
        // SAFETY: lseek on an open descriptor; nothing here uses its file offset.
        let end = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(file), 0, libc::SEEK_END) };
        return u64::try_from(end).map_err(|_| io(path)(std::io::Error::last_os_error()));
    }
    Err(RegionError::Refused {
        path: path.to_owned(),
        reason: format!(
            "is a {}; a region is a regular file or a block device",
            file_type_name(rustix::fs::FileType::from_raw_mode(
                std::os::unix::fs::MetadataExt::mode(&meta)
            ))
        ),
    })
}

/// Opens a region the owner names on its command line (links are followed: the path is the
/// user's own), without blocking on a FIFO and refusing anything but a regular file or a block
/// device.
pub fn open_region(path: &Path, writable: bool) -> Result<(File, u64), RegionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EISDIR) => RegionError::Refused {
                path: path.to_owned(),
                reason: "is a directory; a region is a regular file or a block device".into(),
            },
            _ => RegionError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
    let size = region_size(&file, path)?;
    Ok((file, size))
}

/// A file the owner replicates (or a replica a mount is served from), mapped shared and
/// read-only.
pub struct SourceFile {
    path: PathBuf,
    file: File,
    map: MappedFile<Mmap>,
    geom: Geometry,
}

impl SourceFile {
    /// Opens the region at `path` (a regular file or a block device).
    pub fn open(path: &Path, chunk_shift: u8) -> Result<Self, RegionError> {
        let (file, _) = open_region(path, false)?;
        Self::from_file(file, path, chunk_shift)
    }

    /// Maps `file`, opened already; `path` names it in messages.
    pub fn from_file(file: File, path: &Path, chunk_shift: u8) -> Result<Self, RegionError> {
        let size = region_size(&file, path)?;
        if size == 0 {
            return Err(RegionError::Empty {
                path: path.to_owned(),
            });
        }
        let geom = Geometry::with_preferred_shift(size, chunk_shift).map_err(|e| {
            RegionError::Geometry {
                path: path.to_owned(),
                reason: e.reason,
            }
        })?;
        let map = MappedFile::read_only(&file, size, path)?;
        Ok(SourceFile {
            path: path.to_owned(),
            file,
            map,
            geom,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Source for SourceFile {
    fn geometry(&self) -> Geometry {
        self.geom
    }

    fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Fails if the file no longer has the size it had when the sync started, or shrank under a
    /// read since.
    fn check(&self) -> Result<(), RegionError> {
        let now = region_size(&self.file, &self.path)?;
        if now != self.geom.size() || self.map.poisoned() {
            return Err(RegionError::Resized {
                path: self.path.clone(),
                was: self.geom.size(),
                now,
            });
        }
        Ok(())
    }

    fn intact(&self) -> bool {
        !self.map.poisoned()
    }

    /// Chunks wholly in holes of a sparse file are not read: they hash as zeros.
    fn hashes(&self) -> Vec<u64> {
        hash_file(&self.file, &self.geom, &self.map)
    }
}

/// A replica's copy of a region, DIR/NAME. Chunks are written with `pwrite` (one copy into the
/// page cache, no page faults, which a writable mapping would take on every page of a new
/// file), a run of consecutive ones at a time, and read through a shared read-only mapping;
/// local readers see each run as it lands, and [`ReplicaFile::on_landed`] hears of it.
pub struct ReplicaFile {
    file: File,
    map: MappedFile<Mmap>,
    geom: Geometry,
    zeros: Vec<u8>,
    index: ReplicaIndex,
    loaded: Loaded,
    landing: Landing,
    on_landed: Option<OnLanded>,
}

/// Told of each run of chunks (their indices, never none) once it is in the file.
type OnLanded = Box<dyn Fn(std::ops::Range<u64>) + Send + Sync>;

/// Consecutive chunks written to a [`ReplicaFile`] and not yet in the file: one pwrite(2) of up
/// to [`LANDING_BYTES`] instead of one per chunk (a new tmpfs file takes 1 GiB in 4 KiB writes
/// in 0.72 s here, in 1 MiB writes in 0.46 s).
#[derive(Default)]
struct Landing {
    /// The chunks held, `first .. first + count`.
    first: u64,
    count: u64,
    bytes: Vec<u8>,
}

/// The most bytes a [`Landing`] holds before they go to the file.
const LANDING_BYTES: usize = 1 << 20;

impl ReplicaFile {
    /// Opens replica `name` of `dir`, creating it, with exactly the region's size (an existing
    /// file is truncated or extended, so the replica is never larger or smaller than the region).
    /// `durable`: the file's name and size are on stable storage when it returns. The chunks'
    /// hashes come from the replica's index where it proves them ([`ReplicaIndex`]).
    pub fn open(
        dir: &ReplicaDir,
        name: &str,
        geom: Geometry,
        durable: bool,
    ) -> Result<Self, RegionError> {
        let path = dir.display(name);
        let path = path.as_path();
        let file = dir.create(name)?;
        if file.metadata().map_err(io(path))?.len() != geom.size() {
            // A new file (perhaps with an old one's inode number) or a resized one: no index
            // describes it.
            index::forget_index(dir, name)?;
            file.set_len(geom.size()).map_err(io(path))?;
        }
        if durable {
            file.sync_data().map_err(io(path))?;
            dir.sync()?;
        }
        let map = MappedFile::read_only(&file, geom.size(), path)?;
        let (index, loaded) = ReplicaIndex::load(dir, name, &file, &map, geom, durable)?;
        Ok(ReplicaFile {
            file,
            map,
            geom,
            zeros: Vec::new(),
            index,
            loaded,
            landing: Landing::default(),
            on_landed: None,
        })
    }

    /// The region's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    /// An exclusive flock(2) of the replica, held until the guard drops: local readers that take
    /// a shared one (`flock -s DIR/NAME …`) wait meanwhile, so they never see a generation half
    /// applied (`serve --consistent`).
    pub fn lock_readers(&mut self) -> std::io::Result<ReadersLocked> {
        self.land()?;
        let f = self.file.try_clone()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(ReadersLocked(f))
    }

    /// How the hashes were found when the replica opened.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The last generation acknowledged, as recorded in the index (0 for a new one).
    pub fn committed(&self) -> u64 {
        self.index.committed()
    }

    /// Generation `g` is applied and acknowledged: recorded in the index, which is checkpointed
    /// when one is due (so that a crash leaves little to rehash).
    pub fn commit(&mut self, g: u64) -> std::io::Result<()> {
        self.land()?;
        self.index.set_committed(g)?;
        if self.index.checkpoint_due() {
            let r = self.index.checkpoint(&self.file, false);
            self.failed(r)?;
        }
        Ok(())
    }

    /// `r`, after forgetting the index if it is an error: the replica's bytes are then unknown.
    fn failed<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            self.index.forget(&format!("the replica failed: {e}"));
        }
        r
    }

    /// The region is owned here now (a handoff): this peer's writers change DIR/NAME from here
    /// on, so its index no longer describes it.
    pub fn owned_here(&self) {
        self.index.forget("the region is owned here now");
    }

    /// The replica's bytes, through its read-only mapping: the chunks that landed.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// fsync(2): every chunk written so far is on stable storage once it returns.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.land()?;
        self.failed(self.file.sync_data())
    }

    /// Starts writing back what was written so far, without waiting (sync_file_range(2) with
    /// SYNC_FILE_RANGE_WRITE): a later [`ReplicaFile::sync`] then has little left to wait for.
    pub fn start_writeback(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        self.land()?;
        // SAFETY: sync_file_range on an open descriptor; it only schedules I/O.
        unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        Ok(())
    }

    /// The hash of every chunk.
    pub fn hashes(&self) -> &[u64] {
        self.index.hashes()
    }

    /// Calls `f` with each run of chunks written from here on, once it is in the file (the
    /// replica's mounts learn of its changes so, never before they can read them).
    pub fn on_landed(&mut self, f: impl Fn(std::ops::Range<u64>) + Send + Sync + 'static) {
        self.on_landed = Some(Box::new(f));
    }

    /// Writes chunk `index`: `data`, or zeros (skipped when the chunk already reads as zeros, so
    /// sparse files stay sparse). Data is held while the chunks written follow one another, and
    /// lands in the file with the run: when the next chunk does not follow, when the run holds
    /// [`LANDING_BYTES`], at [`ReplicaFile::land`], or before anything reads or syncs the file.
    pub fn write_chunk(&mut self, index: u64, data: Option<&[u8]>) -> std::io::Result<()> {
        let r = self.write(index, data);
        self.failed(r)
    }

    /// Whether chunks written are held, not yet in the file.
    pub fn holding(&self) -> bool {
        self.landing.count > 0
    }

    /// Writes the chunks held back by [`ReplicaFile::write_chunk`].
    pub fn land(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let l = &mut self.landing;
        if l.count == 0 {
            return Ok(());
        }
        let r = self.file.write_all_at(&l.bytes, self.geom.offset(l.first));
        let landed = l.first..l.first + l.count;
        l.bytes.clear();
        l.count = 0;
        self.failed(r)?;
        if let Some(f) = &self.on_landed {
            f(landed);
        }
        Ok(())
    }

    fn write(&mut self, index: u64, data: Option<&[u8]>) -> std::io::Result<()> {
        self.index.before_write(index)?;
        let len = data.map_or_else(|| self.geom.chunk_len(index), <[u8]>::len);
        let l = &self.landing;
        let follows =
            l.count > 0 && index == l.first + l.count && l.bytes.len() + len <= LANDING_BYTES;
        if !follows {
            self.land()?;
        }
        // Zeros over a chunk that reads as zeros change nothing: not written, so sparse files
        // stay sparse (the chunk is not held, so it is not in the run either).
        let bytes = match data {
            Some(d) => Some(d),
            None if is_zero(&self.map[self.geom.range(index)]) => None,
            None => {
                self.zeros.resize(len, 0);
                Some(&self.zeros[..])
            }
        };
        if let Some(d) = bytes {
            let l = &mut self.landing;
            if l.count == 0 {
                l.first = index;
                l.bytes.reserve(LANDING_BYTES);
            }
            l.bytes.extend_from_slice(d);
            l.count += 1;
        }
        self.index.written(index, data);
        Ok(())
    }
}

/// An exclusive flock(2) of a replica ([`ReplicaFile::lock_readers`]), released on drop.
pub struct ReadersLocked(File);

impl Drop for ReadersLocked {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

impl Drop for ReplicaFile {
    /// A clean stop: the replica and its index on stable storage, no extent left to rehash.
    fn drop(&mut self) {
        let landed = self.land();
        if let Err(e) = landed.and_then(|()| self.index.checkpoint(&self.file, true)) {
            tracing::warn!("{}: checkpoint: {e}", self.index.path().display());
        }
    }
}

/// The hash of every chunk of `file`, mapped at `bytes`, using every core. Chunks that lie wholly
/// in holes of a sparse file are zeros and are not read: reading them would fill the page cache
/// (and a reader's resident memory) with zero pages for nothing.
pub(crate) fn hash_file(file: &File, geom: &Geometry, bytes: &[u8]) -> Vec<u64> {
    let holes = data_chunks(file, geom);
    let zero = ZeroHashes::new(geom);
    let mut out = vec![0u64; geom.chunk_count() as usize];
    for_each_part(geom, bytes, &mut out, |first, part, out| {
        let cs = geom.chunk_size() as usize;
        for (k, (chunk, h)) in part.chunks(cs).zip(out.iter_mut()).enumerate() {
            let i = first + k as u64;
            *h = match &holes {
                Some(data) if !data.contains(i) => zero.of(i),
                _ => chunk_hash(chunk),
            };
        }
    });
    out
}

/// The chunks of `file` that hold data, from SEEK_DATA/SEEK_HOLE (lseek(2)); `None` when the
/// file system cannot say, in which case every chunk must be read.
fn data_chunks(file: &File, geom: &Geometry) -> Option<DirtySet> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let size = geom.size() as i64;
    let mut data = DirtySet::new(geom.chunk_count());
    let mut pos = 0i64;
    while pos < size {
        // SAFETY: lseek on a valid, open descriptor; it only moves the file offset, which
        // nothing else here relies on (reads and writes use pread/pwrite or the mapping).
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => Some(data), // no data past `pos`
                _ => None,
            };
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return None;
        }
        let end = end.min(size);
        data.insert_range(geom.chunks_of_range(start as u64, (end - start) as u64));
        pos = end;
    }
    Some(data)
}

/// Hashes every chunk of `bytes`, using every available core.
pub fn hash_all(geom: &Geometry, bytes: &[u8]) -> Vec<u64> {
    let mut out = vec![0u64; geom.chunk_count() as usize];
    for_each_part(geom, bytes, &mut out, |first, part, out| {
        hash_chunks(geom, first, part, out)
    });
    out
}

/// Splits the region into one contiguous run of chunks per core and runs `f(first_chunk, bytes,
/// per_chunk_slots)` on each in parallel.
pub fn for_each_part<T: Send>(
    geom: &Geometry,
    bytes: &[u8],
    per_chunk: &mut [T],
    f: impl Fn(u64, &[u8], &mut [T]) + Sync,
) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = geom.chunk_count() as usize;
    let per = n.div_ceil(threads).max(1);
    let cs = geom.chunk_size() as usize;
    std::thread::scope(|s| {
        for (k, slots) in per_chunk.chunks_mut(per).enumerate() {
            let first = k * per;
            let start = first * cs;
            let end = ((first + slots.len()) * cs).min(bytes.len());
            let part = &bytes[start..end];
            let f = &f;
            s.spawn(move || f(first as u64, part, slots));
        }
    });
}
