//! Region stores: the owner's view of a file it replicates (a shared, read-only mapping, so writes
//! by any process through the page cache are visible) and the replica's copy (a shared, writable
//! mapping of DIR/NAME, so local readers see each update as it lands).

use memmap2::{Mmap, MmapMut, MmapOptions};
use memsync_protocol::hash::{hash_chunks, is_zero};
use memsync_protocol::Geometry;
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

/// A replica's copy of a region, DIR/NAME, mapped shared and writable.
pub struct ReplicaFile {
    map: MmapMut,
    geom: Geometry,
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
        // SAFETY: this process is the only writer of a replica file (the serve loop allows one
        // stream per region name); other processes may read it concurrently, which cannot make
        // our writes unsound.
        let map = unsafe { MmapOptions::new().len(geom.size() as usize).map_mut(&file) }
            .map_err(io(path))?;
        Ok(ReplicaFile { map, geom })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Writes chunk `index`: `data`, or zeros (skipped when the chunk already reads as zeros, so
    /// sparse files stay sparse).
    pub fn write_chunk(&mut self, index: u64, data: Option<&[u8]>) {
        let dst = &mut self.map[self.geom.range(index)];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None if is_zero(dst) => {}
            None => dst.fill(0),
        }
    }

    /// Starts writing dirty pages back to the file (asynchronously).
    pub fn flush_async(&self) -> std::io::Result<()> {
        self.map.flush_async()
    }
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
