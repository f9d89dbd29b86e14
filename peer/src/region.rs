//! Region stores: the owner's view of a file it replicates (a shared, read-only mapping, so writes
//! by any process through the page cache are visible) and the replica's copy (a shared, writable
//! mapping of DIR/NAME, so local readers see each update as it lands).

use memmap2::{Mmap, MmapOptions};
use memsync_protocol::hash::{chunk_hash, hash_chunks, is_zero, ZeroHashes};
use memsync_protocol::{DirtySet, Geometry};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty; a region needs at least one byte")]
    Empty { path: PathBuf },
    #[error("{path}: {reason}")]
    Geometry { path: PathBuf, reason: String },
    #[error("{path} changed size from {was} to {now} bytes while being synced; resizing a region is not supported yet: restart the sync to replicate the new size")]
    Resized { path: PathBuf, was: u64, now: u64 },
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
    fn geometry(&self) -> Geometry;
    /// The whole region, `geometry().size()` bytes.
    fn bytes(&self) -> &[u8];
    /// Fails when the region can no longer be read as it was opened (a file that changed size).
    fn check(&self) -> Result<(), RegionError> {
        Ok(())
    }
    /// The bytes of chunk `index`.
    fn chunk(&self, index: u64) -> &[u8] {
        &self.bytes()[self.geometry().range(index)]
    }
}

/// A file the owner replicates, mapped shared and read-only.
pub struct SourceFile {
    path: PathBuf,
    file: File,
    map: Mmap,
    geom: Geometry,
}

impl SourceFile {
    pub fn open(path: &Path, chunk_shift: u8) -> Result<Self, RegionError> {
        let file = File::open(path).map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
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
        // SAFETY: the mapping is shared with writers in other processes, which is the point: we
        // only ever copy and hash its bytes, never form references that assume they are frozen
        // beyond that. Truncation by another process could raise SIGBUS on access; `Source::check`
        // runs before every scan and round to catch it, leaving only a narrow race.
        let map = unsafe { MmapOptions::new().len(size as usize).map(&file) }.map_err(io(path))?;
        Ok(SourceFile {
            path: path.to_owned(),
            file,
            map,
            geom,
        })
    }

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

    /// Fails if the file no longer has the size it had when the sync started.
    fn check(&self) -> Result<(), RegionError> {
        let now = self.file.metadata().map_err(io(&self.path))?.len();
        if now != self.geom.size() {
            return Err(RegionError::Resized {
                path: self.path.clone(),
                was: self.geom.size(),
                now,
            });
        }
        Ok(())
    }
}

/// A replica's copy of a region, DIR/NAME. Chunks are written with `pwrite` (one copy into the
/// page cache, no page faults, which a writable mapping would take on every page of a new
/// file), and read through a shared read-only mapping; local readers see each update as it lands.
pub struct ReplicaFile {
    file: File,
    map: Mmap,
    geom: Geometry,
    zeros: Vec<u8>,
}

impl ReplicaFile {
    /// Opens or creates `path` with exactly the region's size (an existing file is truncated or
    /// extended, so the replica is never larger or smaller than the region).
    pub fn open(path: &Path, geom: Geometry) -> Result<Self, RegionError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        if file.metadata().map_err(io(path))?.len() != geom.size() {
            file.set_len(geom.size()).map_err(io(path))?;
        }
        // SAFETY: this process writes the file only through `write_chunk`, between reads of
        // the mapping, and never truncates it while mapped; other processes may read it.
        let map =
            unsafe { MmapOptions::new().len(geom.size() as usize).map(&file) }.map_err(io(path))?;
        Ok(ReplicaFile {
            file,
            map,
            geom,
            zeros: Vec::new(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The hash of every chunk. Chunks that lie wholly in holes of a sparse file (a new replica)
    /// are known to be zeros and are not read: reading them would fill the page cache with zero
    /// pages for nothing.
    pub fn hashes(&self) -> Vec<u64> {
        let holes = data_chunks(&self.file, &self.geom);
        let zero = ZeroHashes::new(&self.geom);
        let mut out = vec![0u64; self.geom.chunk_count() as usize];
        for_each_part(&self.geom, &self.map, &mut out, |first, part, out| {
            let cs = self.geom.chunk_size() as usize;
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

    /// Writes chunk `index`: `data`, or zeros (skipped when the chunk already reads as zeros, so
    /// sparse files stay sparse).
    pub fn write_chunk(&mut self, index: u64, data: Option<&[u8]>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let offset = self.geom.offset(index);
        match data {
            Some(d) => self.file.write_all_at(d, offset),
            None if is_zero(&self.map[self.geom.range(index)]) => Ok(()),
            None => {
                self.zeros.resize(self.geom.chunk_len(index), 0);
                self.file.write_all_at(&self.zeros, offset)
            }
        }
    }
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
