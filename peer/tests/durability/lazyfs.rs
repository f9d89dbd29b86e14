//! A file system that forgets what was not fsynced, in the spirit of Jepsen's LazyFS: the test's
//! "power loss" for a replica directory. Files live in this process's memory as two copies, the
//! bytes written and the bytes last made durable by fsync(2)/fdatasync(2) of that file; a crash
//! puts every file back to its durable copy, and the mount is dropped and made anew, so no page
//! cache of the kernel survives it either. Names and directories are durable at once (as a
//! journaling file system makes them after its commit interval): what this tests is data.
//!
//! Mounted with the `fuser` crate, in a thread of the test process; no write-back cache is
//! negotiated, so every write(2) reaches it when the writer makes it.

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(1);

enum Node {
    Dir(BTreeMap<OsString, u64>),
    File { data: Vec<u8>, durable: Vec<u8> },
}

struct Files {
    nodes: HashMap<u64, Node>,
    next: u64,
}

impl Files {
    fn new() -> Files {
        let root = Node::Dir(BTreeMap::new());
        Files {
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            next: INodeNo::ROOT.0 + 1,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm) = match self.nodes.get(&ino)? {
            Node::Dir(_) => (FileType::Directory, 0, 0o755),
            Node::File { data, .. } => (FileType::RegularFile, data.len() as u64, 0o644),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut Vec<u8>), Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File { data, durable }) => Ok((data, durable)),
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Adds `node` as `name` in directory `parent` (or finds the file already there).
    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<u64, Errno> {
        if let Some(&ino) = self.dir(parent)?.get(name) {
            return match (&node, self.nodes.get(&ino)) {
                (Node::File { .. }, Some(Node::File { .. })) => Ok(ino),
                _ => Err(Errno::EEXIST),
            };
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        self.dir(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Every file back to what was last made durable; returns the bytes that were not.
    fn crash(&mut self) -> usize {
        let mut lost = 0;
        for node in self.nodes.values_mut() {
            if let Node::File { data, durable } = node {
                lost += data
                    .iter()
                    .zip(durable.iter())
                    .filter(|(a, b)| a != b)
                    .count()
                    + data.len().abs_diff(durable.len());
                data.clone_from(durable);
            }
        }
        lost
    }
}

fn empty_file() -> Node {
    Node::File {
        data: Vec::new(),
        durable: Vec::new(),
    }
}

struct Fs(Arc<Mutex<Files>>);

impl Fs {
    fn entry(&self, ino: Result<u64, Errno>, reply: ReplyEntry) {
        let files = self.0.lock().unwrap();
        match ino.map(|i| files.attr(i)) {
            Ok(Some(a)) => reply.entry(&TTL, &a, Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn done(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = {
            let mut files = self.0.lock().unwrap();
            files
                .dir(parent.0)
                .and_then(|d| d.get(name).copied().ok_or(Errno::ENOENT))
        };
        self.entry(ino, reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.lock().unwrap().attr(ino.0) {
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
        let mut files = self.0.lock().unwrap();
        if let Some(size) = size {
            match files.file(ino.0) {
                Ok((data, _)) => data.resize(size as usize, 0),
                Err(e) => return reply.error(e),
            }
        }
        match files.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let ino = self
            .0
            .lock()
            .unwrap()
            .add(parent.0, name, Node::Dir(BTreeMap::new()));
        self.entry(ino, reply)
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut files = self.0.lock().unwrap();
        match files.add(parent.0, name, empty_file()) {
            Ok(ino) => {
                let a = files.attr(ino).expect("just added");
                reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
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
        let mut files = self.0.lock().unwrap();
        match files.file(ino.0) {
            Ok((data, _)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end])
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut files = self.0.lock().unwrap();
        match files.file(ino.0) {
            Ok((data, _)) => {
                let end = offset as usize + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[offset as usize..end].copy_from_slice(bytes);
                reply.written(bytes.len() as u32)
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    /// The one way to make a file's bytes durable.
    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut files = self.0.lock().unwrap();
        let r = files
            .file(ino.0)
            .map(|(data, durable)| durable.clone_from(data));
        Self::done(reply, r)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut files = self.0.lock().unwrap();
        let entries: Vec<(u64, OsString)> = match files.dir(ino.0) {
            Ok(d) => d.iter().map(|(n, i)| (*i, n.clone())).collect(),
            Err(e) => return reply.error(e),
        };
        let dots = [(ino.0, ".".into()), (ino.0, "..".into())];
        for (k, (i, name)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            let kind = match files.nodes.get(&i) {
                Some(Node::File { .. }) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if reply.add(INodeNo(i), k as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok()
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut files = self.0.lock().unwrap();
        let r = files
            .dir(parent.0)
            .and_then(|d| d.remove(name).ok_or(Errno::ENOENT));
        Self::done(reply, r.map(|ino| drop(files.nodes.remove(&ino))))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut files = self.0.lock().unwrap();
        let r = (|| {
            let ino = files.dir(parent.0)?.remove(name).ok_or(Errno::ENOENT)?;
            if let Some(old) = files.dir(newparent.0)?.insert(newname.to_owned(), ino) {
                files.nodes.remove(&old);
            }
            Ok(())
        })();
        Self::done(reply, r)
    }
}

/// The file system mounted at a directory; unmounted when dropped.
pub struct LazyFs {
    files: Arc<Mutex<Files>>,
    at: PathBuf,
    session: Option<BackgroundSession>,
}

impl LazyFs {
    /// Mounts an empty file system at `at` (an existing directory).
    pub fn mount(at: &Path) -> LazyFs {
        let mut fs = LazyFs {
            files: Arc::new(Mutex::new(Files::new())),
            at: at.to_owned(),
            session: None,
        };
        fs.remount();
        fs
    }

    fn remount(&mut self) {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("lazyfs".into())];
        let session = fuser::spawn_mount(Fs(self.files.clone()), &self.at, &config)
            .unwrap_or_else(|e| panic!("mounting the test file system at {:?}: {e}", self.at));
        self.session = Some(session);
    }

    /// The machine loses power: the mount goes, every file keeps only what was fsynced, and the
    /// file system comes back. Whoever used it must be gone (killed) first. Returns the bytes
    /// lost.
    pub fn crash(&mut self) -> usize {
        if let Some(s) = self.session.take() {
            s.umount_and_join()
                .expect("unmounting the test file system");
        }
        let lost = self.files.lock().unwrap().crash();
        self.remount();
        lost
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
