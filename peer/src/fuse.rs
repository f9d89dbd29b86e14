//! The `fuse` detector's file system: an owner's region file exposed as MOUNT/NAME through FUSE
//! (the `fuser` crate, no libfuse), so that applications read, write and mmap it while every write
//! the kernel hands the daemon (write(2), and a shared mapping's dirty pages when written back or
//! msync'ed) is a precise mark of its chunks: nothing is scanned.
//!
//! Rule: the file system only forwards. Reads, writes and flushes go to the region's
//! [`FileExport`], as the NBD export's do: marked under its lock, held while a migration freezes
//! them, refused once the region was handed over, and FLUSH/FSYNC durable (with
//! `--flush-waits-for-replica`, acknowledged by the replica too). The region's size is fixed.

use crate::nbd::server::Export;
use crate::nbd::FileExport;
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::runtime::Handle;

/// How long the kernel may cache names and attributes: they never change but for the mode.
const TTL: Duration = Duration::from_secs(1);
/// The region file's inode (the root directory is [`INodeNo::ROOT`]).
const FILE: INodeNo = INodeNo(2);

/// A mounted region; unmounted when dropped. A daemon killed outright leaves a dead mount: the
/// kernel fails every call on it (ENOTCONN) instead of leaving its callers hung, and the next
/// [`mount`] at the same place detaches it first.
pub struct FuseMount {
    session: Option<BackgroundSession>,
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::warn!("unmounting the region's file system: {e}");
            }
        }
    }
}

/// Mounts directory `at` holding one file, `name`, whose bytes are `export`'s; requests are
/// served on `rt`.
pub fn mount(at: &Path, name: &str, export: Arc<FileExport>, rt: Handle) -> io::Result<FuseMount> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("memsync".into()),
        MountOption::Subtype("memsync".into()),
        MountOption::DefaultPermissions,
    ];
    // Writes held by a freeze wait in tasks, not in these threads, so a few serve every request.
    config.n_threads = Some(2);
    let fs = RegionFs {
        name: name.into(),
        export,
        rt,
        since: SystemTime::now(),
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    };
    let session = match fuser::spawn_mount(fs.clone(), at, &config) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            detach_dead_mount(at)?;
            fuser::spawn_mount(fs, at, &config)?
        }
        r => r?,
    };
    Ok(FuseMount {
        session: Some(session),
    })
}

/// A killed daemon's mount at `at` answers ENOTCONN to everything: detach it (umount2 with
/// MNT_DETACH), so the region can be mounted there again.
fn detach_dead_mount(at: &Path) -> io::Result<()> {
    rustix::mount::unmount(at, rustix::mount::UnmountFlags::DETACH)?;
    tracing::info!("{}: detached the mount a killed sync left", at.display());
    Ok(())
}

#[derive(Clone)]
struct RegionFs {
    name: std::ffi::OsString,
    export: Arc<FileExport>,
    rt: Handle,
    /// The file's times: the mount's.
    since: SystemTime,
    uid: u32,
    gid: u32,
}

impl RegionFs {
    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0, 0o755, 2),
            FILE if self.export.read_only() => {
                (FileType::RegularFile, self.export.size(), 0o444, 1)
            }
            FILE => (FileType::RegularFile, self.export.size(), 0o644, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.since,
            mtime: self.since,
            ctime: self.since,
            crtime: self.since,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Bytes `offset .. offset + len` of the region, or why not.
    fn inside(&self, ino: INodeNo, offset: u64, len: u64) -> Result<(), Errno> {
        if ino != FILE {
            return Err(Errno::EISDIR);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.export.size() => Ok(()),
            // The region cannot grow.
            _ => Err(Errno::ENOSPC),
        }
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Filesystem for RegionFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match (parent, self.attr(FILE)) {
            (INodeNo::ROOT, Some(a)) if name == self.name => reply.entry(&TTL, &a, Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Times and modes are the mount's; the size cannot change (an O_TRUNC open fails here).
        if size.is_some_and(|s| s != self.export.size()) {
            return reply.error(Errno::EPERM);
        }
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino {
            // Through the page cache (no DIRECT_IO), so the file can be mapped.
            FILE => reply.opened(FileHandle(0), FopenFlags::empty()),
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        // At or past the end: nothing to read (and no slice of the mapping to make).
        let len = (size as u64).min(self.export.size().saturating_sub(offset));
        if len == 0 {
            return reply.data(&[]);
        }
        let export = self.export.clone();
        self.rt.spawn(async move {
            let mut buf = vec![0; len as usize];
            match export.read(offset, &mut buf).await {
                Ok(()) => reply.data(&buf),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.inside(ino, offset, data.len() as u64) {
            return reply.error(e);
        }
        let (export, data) = (self.export.clone(), data.to_vec());
        self.rt.spawn(async move {
            match export.write(offset, &data, false).await {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.durable(reply)
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.durable(reply)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (FILE, FileType::RegularFile, self.name.as_os_str()),
        ];
        for (k, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, k as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    /// No extended attributes: ENOSYS tells the kernel so once, and it stops asking (fuser's
    /// default answers the same, with a warning per mount).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }
}

impl RegionFs {
    /// FLUSH (close) and FSYNC: the export's flush, as an NBD client's FLUSH.
    fn durable(&self, reply: ReplyEmpty) {
        let export = self.export.clone();
        self.rt.spawn(async move {
            match export.flush().await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}
