//! A local cache of chunk objects in a directory, shared by every mount and restore on the
//! machine that names it: chunks are named by their BLAKE3 hash (spec/STORAGE.md), so a chunk
//! another generation, region or process fetched is read from the local disk instead of the
//! store. Rules: it is bounded (past its size limit the least recently used files are deleted)
//! and never trusted (each file is checked against its name when read; a wrong one is deleted
//! and the chunk fetched again). Files are written whole under a temporary name and renamed, so
//! a reader in another process sees a chunk entirely or not at all.

use super::format::{chunk_name, ChunkName};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Temporary files left by a process that died while writing one are deleted after this long.
const STALE_TEMPORARY: Duration = Duration::from_secs(600);

/// A directory of chunk files, at most `limit` bytes of them as this process knows them.
pub struct ChunkCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Which chunks are cached and in which order they were last used.
#[derive(Default)]
struct State {
    tick: u64,
    used: u64,
    /// Chunk → (its length, its last use).
    entries: HashMap<ChunkName, (u64, u64)>,
    /// Last use → chunk, oldest first.
    order: BTreeMap<u64, ChunkName>,
}

impl State {
    /// Records a use of chunk `name` of `len` bytes.
    fn touch(&mut self, name: ChunkName, len: u64) {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.insert(name, (len, tick)) {
            Some((_, old)) => {
                self.order.remove(&old);
            }
            None => self.used += len,
        }
        self.order.insert(tick, name);
    }

    fn forget(&mut self, name: &ChunkName) {
        if let Some((len, tick)) = self.entries.remove(name) {
            self.used -= len;
            self.order.remove(&tick);
        }
    }

    /// The least recently used chunk other than `keep`, while more than `limit` bytes are used.
    fn victim(&mut self, limit: u64, keep: &ChunkName) -> Option<ChunkName> {
        if self.used <= limit {
            return None;
        }
        let (_, name) = self.order.iter().find(|(_, n)| *n != keep)?;
        let name = *name;
        self.forget(&name);
        Some(name)
    }
}

impl ChunkCache {
    /// The cache in `dir` (created), bounded to `limit` bytes: the files already there are
    /// counted, oldest use first (their modification time, which each use advances), and the
    /// oldest deleted past the limit.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<ChunkCache> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            // Not followed: a link in the directory is neither a chunk nor deleted. A file
            // another process deleted meanwhile (its own eviction) is skipped.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !meta.file_type().is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if file_name.starts_with(".tmp-") {
                if modified.elapsed().is_ok_and(|age| age > STALE_TEMPORARY) {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            if let Some(name) = parse_name(file_name) {
                found.push((modified, name, meta.len()));
            }
        }
        found.sort();
        let mut state = State::default();
        for (_, name, len) in found {
            state.touch(name, len);
        }
        let cache = ChunkCache {
            dir: dir.to_owned(),
            limit,
            state: Mutex::new(state),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        };
        cache.evict(&[0; 32]);
        Ok(cache)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads that the cache answered, and reads it could not.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    fn path(&self, name: &ChunkName) -> PathBuf {
        self.dir.join(hex::encode(name))
    }

    /// Chunk `name` of `len` bytes, if a file here holds exactly it. Another process's files
    /// count too; a file that fails its check is deleted.
    pub fn get(&self, name: &ChunkName, len: usize) -> Option<Vec<u8>> {
        let path = self.path(name);
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            let mut data = Vec::with_capacity(len);
            // One byte more than the chunk: a longer file is as wrong as a shorter one.
            Read::by_ref(&mut f)
                .take(len as u64 + 1)
                .read_to_end(&mut data)?;
            // Its use, for the order of eviction in the next process to open the cache.
            let _ = f.set_modified(SystemTime::now());
            Ok(data)
        };
        let data = match read() {
            Ok(d) => d,
            Err(_) => {
                self.misses.fetch_add(1, Relaxed);
                self.state.lock().expect("cache lock").forget(name);
                return None;
            }
        };
        if data.len() != len || chunk_name(&data) != *name {
            tracing::warn!(
                "{}: holds {} bytes that are not the chunk it names; deleted, fetching the chunk again",
                path.display(),
                data.len()
            );
            let _ = std::fs::remove_file(&path);
            self.state.lock().expect("cache lock").forget(name);
            self.misses.fetch_add(1, Relaxed);
            return None;
        }
        self.hits.fetch_add(1, Relaxed);
        self.state
            .lock()
            .expect("cache lock")
            .touch(*name, len as u64);
        self.evict(name);
        Some(data)
    }

    /// Keeps chunk `name`, whose bytes `data` were checked against it, deleting the least
    /// recently used chunks past the limit. A chunk larger than the whole cache is not kept. A
    /// failure is logged: the cache only saves fetches.
    pub fn put(&self, name: &ChunkName, data: &[u8]) {
        if data.len() as u64 > self.limit
            || self
                .state
                .lock()
                .expect("cache lock")
                .entries
                .contains_key(name)
        {
            return;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f: File = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(data)?;
            // No fsync: a file torn by a crash fails its check and is fetched again.
            std::fs::rename(&tmp, self.path(name))
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("caching a chunk in {}: {e}", self.dir.display());
            return;
        }
        self.state
            .lock()
            .expect("cache lock")
            .touch(*name, data.len() as u64);
        self.evict(name);
    }

    /// Deletes the least recently used chunks other than `keep` until the cache fits its limit.
    fn evict(&self, keep: &ChunkName) {
        loop {
            let Some(victim) = self
                .state
                .lock()
                .expect("cache lock")
                .victim(self.limit, keep)
            else {
                return;
            };
            let _ = std::fs::remove_file(self.path(&victim));
        }
    }
}

/// The chunk a file name names: 64 lowercase hex digits.
fn parse_name(file_name: &str) -> Option<ChunkName> {
    if file_name.len() != 64 || file_name.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(file_name).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: u8) -> (ChunkName, Vec<u8>) {
        let data = vec![b; 1000];
        (chunk_name(&data), data)
    }

    #[test]
    fn keeps_within_its_limit_and_deletes_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 2500).unwrap();
        let (a, b, c) = (chunk(1), chunk(2), chunk(3));
        cache.put(&a.0, &a.1);
        cache.put(&b.0, &b.1);
        assert_eq!(cache.get(&a.0, 1000), Some(a.1.clone()));
        // a was used after b: b goes.
        cache.put(&c.0, &c.1);
        assert_eq!(cache.get(&b.0, 1000), None);
        assert_eq!(cache.get(&a.0, 1000), Some(a.1.clone()));
        assert_eq!(cache.get(&c.0, 1000), Some(c.1.clone()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // A new process counts what is there, within a smaller limit.
        let again = ChunkCache::open(dir.path(), 1500).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(again.counts(), (0, 0));
    }

    #[test]
    fn a_wrong_file_is_deleted_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let (a, data) = chunk(7);
        cache.put(&a, &data);
        let path = dir.path().join(hex::encode(a));
        let mut wrong = data.clone();
        wrong[500] ^= 1;
        std::fs::write(&path, &wrong).unwrap();
        assert_eq!(cache.get(&a, 1000), None);
        assert!(!path.exists());
        // Longer than the chunk: as wrong.
        cache.put(&a, &data);
        std::fs::write(&path, [&data[..], b"x"].concat()).unwrap();
        assert_eq!(cache.get(&a, 1000), None);
        // A link is not followed.
        let (b, other) = chunk(8);
        std::fs::write(dir.path().join("elsewhere"), &other).unwrap();
        std::os::unix::fs::symlink("elsewhere", dir.path().join(hex::encode(b))).unwrap();
        assert_eq!(cache.get(&b, 1000), None);
        assert_eq!(cache.counts(), (0, 3));
    }
}
