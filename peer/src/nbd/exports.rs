//! The exports memsync serves over NBD: an owner's region file, where every write marks its
//! chunks for the sync loop, and a lazy mount of a remote region.

use super::server::Export;
use crate::detector::Marks;
use crate::region::{open_region, MappedFile};
use crate::roles::mount::{MemorySink, RemoteRegion};
use memmap2::MmapMut;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// An owner's region file served read-write. Writes go to a shared mapping (so the sync loop's
/// read-only mapping of the same file sees them) and mark their chunks; FLUSH and FUA msync, and
/// with `flush_waits_for_replica` also wait until the replica acknowledged the writes (like DRBD's
/// protocol C).
pub struct FileExport {
    map: Mutex<MappedFile<MmapMut>>,
    size: u64,
    marks: Arc<Marks>,
    flush_waits_for_replica: bool,
}

impl FileExport {
    /// Maps the region file at `path` writable; every write marks `marks`.
    pub fn open(path: &Path, marks: Arc<Marks>, flush_waits_for_replica: bool) -> io::Result<Self> {
        let (file, size) = open_region(path, true).map_err(io::Error::other)?;
        // Shared with this process's read-only mapping of the same file (the sync loop), which
        // only copies and hashes bytes; writes here are serialised by the mutex.
        let map = MappedFile::writable(&file, size, path).map_err(io::Error::other)?;
        Ok(FileExport {
            map: Mutex::new(map),
            size,
            marks,
            flush_waits_for_replica,
        })
    }

    /// An I/O error once the backing file shrank under the mapping: the bytes read or written
    /// since were not the file's. The sync loop is woken to find the file resized and end.
    fn intact(&self, map: &MappedFile<MmapMut>) -> io::Result<()> {
        if map.poisoned() {
            self.marks.wake();
            return Err(io::Error::other("the export's backing file shrank"));
        }
        Ok(())
    }

    async fn durable(&self, position: u64) -> io::Result<()> {
        tokio::task::block_in_place(|| self.map.lock().expect("map lock").flush())?;
        if self.flush_waits_for_replica {
            self.marks.replicated(position).await;
        }
        Ok(())
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        false
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let map = self.map.lock().expect("map lock");
        buf.copy_from_slice(&map[offset as usize..offset as usize + buf.len()]);
        self.intact(&map)
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        {
            let mut map = self.map.lock().expect("map lock");
            map[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            self.intact(&map)?;
        }
        let pos = self.marks.mark(offset, data.len() as u64);
        if fua {
            self.durable(pos).await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        {
            let mut map = self.map.lock().expect("map lock");
            map[offset as usize..(offset + len) as usize].fill(0);
            self.intact(&map)?;
        }
        let pos = self.marks.mark(offset, len);
        if fua {
            self.durable(pos).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        self.durable(self.marks.position()).await
    }
}

/// A lazy mount of a remote region, served read-only: a read of chunks not yet here fetches
/// them at once (overtaking the background pull), and returns an I/O error if the owner is gone.
pub struct MountExport {
    remote: RemoteRegion,
    sink: Arc<MemorySink>,
}

impl MountExport {
    /// Serves the mount `remote`, whose chunks land in `sink`.
    pub fn new(remote: RemoteRegion, sink: Arc<MemorySink>) -> Self {
        MountExport { remote, sink }
    }

    /// The mount behind the export.
    pub fn remote(&self) -> &RemoteRegion {
        &self.remote
    }
}

impl Export for MountExport {
    fn size(&self) -> u64 {
        self.remote.geometry().size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn preferred_block(&self) -> u32 {
        self.remote.geometry().chunk_size() as u32
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let chunks = self
            .remote
            .geometry()
            .chunks_of_range(offset, buf.len() as u64);
        self.remote
            .ensure(chunks)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.sink.read(offset, buf);
        Ok(())
    }

    async fn write(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(super::wire::EPERM as i32))
    }

    async fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(super::wire::EPERM as i32))
    }

    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn cache(&self, offset: u64, len: u64) {
        self.remote
            .prefetch(self.remote.geometry().chunks_of_range(offset, len));
    }
}
