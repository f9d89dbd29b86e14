//! The exports memsync serves over NBD: an owner's region file, where every write marks its
//! chunks for the sync loop (and which holds writes while a migration hands the region over), and
//! a lazy mount of a remote region.

use super::server::Export;
use crate::detector::Marks;
use crate::region::{open_region, MappedFile};
use crate::roles::mount::{MemorySink, RemoteRegion};
use crate::roles::replica::OwnedRegion;
use memmap2::MmapMut;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Whether an owner's export takes writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// Writes go through.
    Open,
    /// A migration froze the writers: writes wait (queued, not failed) until it ends.
    Held,
    /// The region was handed over: this peer holds a copy it no longer owns, and writes are
    /// refused with EPERM, as a read-only replica's export would.
    Refused,
}

/// An owner's region file served read-write. Writes go to a shared mapping (so the sync loop's
/// read-only mapping of the same file sees them) and mark their chunks; FLUSH and FUA msync, and
/// with `flush_waits_for_replica` also wait until the replica acknowledged the writes (like DRBD's
/// protocol C).
pub struct FileExport {
    map: Mutex<MappedFile<MmapMut>>,
    size: u64,
    marks: Arc<Marks>,
    flush_waits_for_replica: bool,
    writes: watch::Sender<Writes>,
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
            writes: watch::Sender::new(Writes::Open),
        })
    }

    /// Runs `f` on bytes `offset..offset + len` of the mapping once writes are let through
    /// (waiting while they are held), and marks them; returns the marks' position. The mark is
    /// made under the map's lock, with the write: a freeze that takes the lock after it finds
    /// the write marked, so the last scan of a migration cannot miss it.
    async fn write_with(&self, offset: u64, len: u64, f: impl Fn(&mut [u8])) -> io::Result<u64> {
        loop {
            writes_pass(&self.writes).await?;
            let mut map = self.map.lock().expect("map lock");
            // The gate may have closed between the check and the lock.
            if *self.writes.borrow() == Writes::Open {
                f(&mut map[offset as usize..(offset + len) as usize]);
                self.intact(&map)?;
                return Ok(self.marks.mark(offset, len));
            }
        }
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

    /// Read-only once the region was handed over (clients connecting after learn it at once).
    fn read_only(&self) -> bool {
        *self.writes.borrow() == Writes::Refused
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let map = self.map.lock().expect("map lock");
        buf.copy_from_slice(&map[offset as usize..offset as usize + buf.len()]);
        self.intact(&map)
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let len = data.len() as u64;
        let pos = self
            .write_with(offset, len, |b| b.copy_from_slice(data))
            .await?;
        if fua {
            self.durable(pos).await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let pos = self.write_with(offset, len, |b| b.fill(0)).await?;
        if fua {
            self.durable(pos).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        self.durable(self.marks.position()).await
    }
}

/// An export whose writes a migration holds, lets through or refuses.
pub trait HoldsWrites: Send + Sync {
    /// From now on writes go through, wait or fail as `w` says; returns once no write is between
    /// its check and its copy.
    fn set_writes(&self, w: Writes);
}

impl HoldsWrites for FileExport {
    fn set_writes(&self, w: Writes) {
        // Under the map's lock, so no write is between its check and its copy.
        let _map = self.map.lock().expect("map lock");
        self.writes.send_replace(w);
    }
}

/// Waits while `gate` holds writes; EPERM once it refuses them.
pub async fn writes_pass(gate: &watch::Sender<Writes>) -> io::Result<()> {
    let mut rx = gate.subscribe();
    loop {
        let state = *rx.borrow_and_update();
        match state {
            Writes::Refused => return Err(io::Error::from_raw_os_error(libc::EPERM)),
            Writes::Held => rx.changed().await.map_err(io::Error::other)?,
            Writes::Open => return Ok(()),
        }
    }
}

/// Freezes the writers of an owner's NBD export for a migration: their writes are held, then
/// refused (EPERM) once the region was handed over, or let through if the handoff failed.
pub struct ExportFreezer(pub Arc<dyn HoldsWrites>);

impl crate::roles::migrate::Freezer for ExportFreezer {
    fn describe(&self) -> String {
        "the NBD export's writes".into()
    }

    fn freeze(&mut self) -> io::Result<()> {
        self.0.set_writes(Writes::Held);
        Ok(())
    }

    fn thaw(&mut self) -> io::Result<()> {
        self.0.set_writes(Writes::Open);
        Ok(())
    }

    fn handed_off(&mut self) -> io::Result<()> {
        self.0.set_writes(Writes::Refused);
        Ok(())
    }

    fn taken_back(&mut self) -> io::Result<()> {
        self.0.set_writes(Writes::Open);
        Ok(())
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

/// A region taken over here in a handoff, served read-write to the workload that now runs here
/// (`serve --nbd-dir`). After a post-copy handoff a read, or a write of part of a chunk, waits
/// for the chunks still with the old owner ([`OwnedRegion`]), and fails with EIO once the old
/// owner has been unreachable for the outage tolerance.
pub struct OwnedExport(pub Arc<OwnedRegion>);

/// Zeros written per piece by WRITE_ZEROES on an [`OwnedExport`].
const ZERO_PIECE: u64 = 1 << 20;

impl Export for OwnedExport {
    fn size(&self) -> u64 {
        self.0.geometry().size()
    }

    fn read_only(&self) -> bool {
        self.0.refuses_writes()
    }

    fn preferred_block(&self) -> u32 {
        self.0.geometry().chunk_size() as u32
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, buf).await
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.0.write(offset, data).await?;
        if fua {
            tokio::task::block_in_place(|| self.0.sync())?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let zeros = vec![0; len.min(ZERO_PIECE) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZERO_PIECE);
            self.0.write(at, &zeros[..n as usize]).await?;
            at += n;
        }
        if fua {
            tokio::task::block_in_place(|| self.0.sync())?;
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        tokio::task::block_in_place(|| self.0.sync())
    }

    fn cache(&self, offset: u64, len: u64) {
        // Asks for the chunks without waiting for them.
        let owned = self.0.clone();
        let chunks = owned.geometry().chunks_of_range(offset, len);
        tokio::spawn(async move {
            let _ = owned.ensure(chunks).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Source, SourceFile};
    use std::time::Duration;

    fn export() -> (tempfile::TempDir, Arc<FileExport>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let marks = Marks::new(SourceFile::open(&path, 16).unwrap().geometry());
        (
            dir,
            Arc::new(FileExport::open(&path, marks, false).unwrap()),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_writes_wait_then_are_refused_or_released() {
        let (_dir, e) = export();
        e.set_writes(Writes::Held);
        let held = tokio::spawn({
            let e = e.clone();
            async move { e.write(0, &[7; 4096], false).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "a write went through while held");
        let mut b = [0u8; 1];
        e.read(0, &mut b).await.unwrap();
        assert_eq!(b, [0], "reads go on, and see no held write");
        e.set_writes(Writes::Refused);
        let err = held.await.unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(e.read_only());

        let (_dir, e) = export();
        e.set_writes(Writes::Held);
        let held = tokio::spawn({
            let e = e.clone();
            async move { e.write(4096, &[9; 4096], false).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        e.set_writes(Writes::Open);
        held.await.unwrap().unwrap();
        e.read(4096, &mut b).await.unwrap();
        assert_eq!(b, [9]);
    }
}
