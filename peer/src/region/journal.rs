//! The staging journal of a crash-consistent replica, DIR/.NAME.journal (`serve --consistent`):
//! a generation's chunks are appended here as they arrive and reach the replica only at its
//! COMMIT, in a crash-safe order: the commit record and everything before it on stable storage
//! (write-ahead), then the chunks applied to the replica and synced, then the journal emptied. So
//! the replica file holds exactly one committed generation after a crash at any instant: a
//! journal with its commit record is replayed (replaying twice writes the same bytes), one
//! without is discarded.
//!
//! The layout is written by hand, not with rkyv: it is an append-only log read back once, record
//! by record, where an archive is written whole. Little-endian throughout:
//! header `"msyncjnl" format:u32 shift:u8 0:u8×3 size:u64 round:u64`, then records
//! `kind:u32 len:u32 index:u64 hash:u64 round:u64` followed by `len` payload bytes for a chunk.
//! A commit record has kind 3, `index` = the generation, `len` = the number of chunk records and
//! `hash` = xxh3 of every chunk record's `index ‖ hash`. `round` is random per round, so records
//! a longer earlier round left behind never read as this one's.

use super::{io, RegionError, ReplicaDir, ReplicaFile};
use memsync_protocol::hash::{chunk_hash, ZeroHashes};
use memsync_protocol::Geometry;
use std::fs::File;
use std::os::unix::fs::FileExt;
use xxhash_rust::xxh3::Xxh3;

const MAGIC: [u8; 8] = *b"msyncjnl";
const FORMAT: u32 = 1;
const HEADER: u64 = 32;
const RECORD: u64 = 32;
const CHUNK: u32 = 1;
const ZERO: u32 = 2;
const COMMIT: u32 = 3;

/// What a journal left by a crash did to the replica when it reopened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// No journal, or an empty one.
    Nothing,
    /// A committed generation that may not have been applied in full was applied again.
    Replayed {
        /// Its generation.
        generation: u64,
        /// Its chunks.
        chunks: u64,
    },
    /// An unfinished round was dropped; the replica holds the generation before it.
    Discarded {
        /// Chunks that had been staged.
        chunks: u64,
    },
}

/// One staged chunk: where its payload lies in the journal.
#[derive(Clone, Copy)]
struct Staged {
    index: u64,
    /// Offset of the payload, or `None` for zeros.
    at: Option<u64>,
}

/// The journal of a consistent replica, staging the open round.
pub struct Journal {
    file: File,
    geom: Geometry,
    round: u64,
    end: u64,
    staged: Vec<Staged>,
    digest: Xxh3,
    zero: ZeroHashes,
}

fn journal_name(name: &str) -> String {
    format!(".{name}.journal")
}

fn record(kind: u32, len: u32, index: u64, hash: u64, round: u64) -> [u8; RECORD as usize] {
    let mut r = [0u8; RECORD as usize];
    r[0..4].copy_from_slice(&kind.to_le_bytes());
    r[4..8].copy_from_slice(&len.to_le_bytes());
    r[8..16].copy_from_slice(&index.to_le_bytes());
    r[16..24].copy_from_slice(&hash.to_le_bytes());
    r[24..32].copy_from_slice(&round.to_le_bytes());
    r
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

impl Journal {
    /// The journal of replica `name`, empty, for rounds of `geom`.
    pub fn create(dir: &ReplicaDir, name: &str, geom: Geometry) -> Result<Journal, RegionError> {
        let path = dir.display(&journal_name(name));
        let file = dir.create(&journal_name(name))?;
        file.set_len(0).map_err(io(&path))?;
        Ok(Journal {
            file,
            geom,
            round: 0,
            end: 0,
            staged: Vec::new(),
            digest: Xxh3::new(),
            zero: ZeroHashes::new(&geom),
        })
    }

    /// Appends chunk `index` (`data`, or zeros when `None`) to the open round.
    pub fn stage(&mut self, index: u64, data: Option<&[u8]>) -> std::io::Result<()> {
        if self.end == 0 {
            self.round = rand::random();
            let mut h = [0u8; HEADER as usize];
            h[0..8].copy_from_slice(&MAGIC);
            h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
            h[12] = self.geom.shift();
            h[16..24].copy_from_slice(&self.geom.size().to_le_bytes());
            h[24..32].copy_from_slice(&self.round.to_le_bytes());
            self.file.write_all_at(&h, 0)?;
            self.end = HEADER;
        }
        let (kind, len, hash) = match data {
            Some(d) => (CHUNK, d.len() as u32, chunk_hash(d)),
            None => (ZERO, 0, self.zero.of(index)),
        };
        self.file
            .write_all_at(&record(kind, len, index, hash, self.round), self.end)?;
        self.end += RECORD;
        let at = data.map(|_| self.end);
        if let Some(d) = data {
            self.file.write_all_at(d, self.end)?;
            self.end += d.len() as u64;
        }
        self.digest.update(&index.to_le_bytes());
        self.digest.update(&hash.to_le_bytes());
        self.staged.push(Staged { index, at });
        Ok(())
    }

    /// Makes the open round generation `g` and applies it to `replica`: the commit record on
    /// stable storage, then every chunk written (readers holding a shared flock(2) of the replica
    /// wait meanwhile) and synced, then the journal emptied.
    pub fn apply(&mut self, g: u64, replica: &mut ReplicaFile) -> std::io::Result<u64> {
        let count = self.staged.len() as u64;
        if count > 0 {
            let digest = self.digest.digest();
            self.file.write_all_at(
                &record(COMMIT, count as u32, g, digest, self.round),
                self.end,
            )?;
            self.file.sync_data()?;
            let staged = std::mem::take(&mut self.staged);
            replay(&self.file, &self.geom, &staged, replica)?;
            // Not synced: if a crash brings this round back, replaying it writes the same bytes,
            // and the next round's commit record is synced over it before that round applies.
            self.file.set_len(0)?;
        }
        self.end = 0;
        self.digest.reset();
        Ok(count)
    }

    /// Empties the journal on stable storage (the region is owned here now: nothing of it may be
    /// applied again over what this peer's writers do next).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.staged.clear();
        self.digest.reset();
        self.end = 0;
        self.file.set_len(0)?;
        self.file.sync_data()
    }
}

/// Writes the staged chunks into `replica` under an exclusive flock(2), then syncs it.
fn replay(
    journal: &File,
    geom: &Geometry,
    staged: &[Staged],
    replica: &mut ReplicaFile,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; geom.chunk_size() as usize];
    let _readers = replica.lock_readers()?;
    for s in staged {
        let data = match s.at {
            Some(at) => {
                let d = &mut buf[..geom.chunk_len(s.index)];
                journal.read_exact_at(d, at)?;
                Some(&*d)
            }
            None => None,
        };
        replica.write_chunk(s.index, data)?;
    }
    replica.sync()
}

/// The geometry a journal left in DIR was written for, if it holds a header.
fn journal_geometry(file: &File) -> Option<Geometry> {
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, 0).ok()?;
    if h[0..8] != MAGIC || le32(&h[8..]) != FORMAT {
        return None;
    }
    Geometry::new(le64(&h[16..]), h[12]).ok()
}

/// Reads the round in `file` (for `geom`): its chunks and, when its commit record is there and
/// every record checks out, its generation.
fn read_round(file: &File, geom: &Geometry) -> std::io::Result<(Vec<Staged>, Option<u64>)> {
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, 0)?;
    let round = le64(&h[24..]);
    let len = file.metadata()?.len();
    let mut staged = Vec::new();
    let mut digest = Xxh3::new();
    let mut buf = vec![0u8; geom.chunk_size() as usize];
    let mut at = HEADER;
    let zero = ZeroHashes::new(geom);
    while at + RECORD <= len {
        let mut r = [0u8; RECORD as usize];
        file.read_exact_at(&mut r, at)?;
        let (kind, n, index, hash) = (le32(&r), le32(&r[4..]), le64(&r[8..]), le64(&r[16..]));
        if le64(&r[24..]) != round {
            break;
        }
        at += RECORD;
        match kind {
            COMMIT => {
                let whole = n as usize == staged.len() && hash == digest.digest();
                return Ok((staged, whole.then_some(index)));
            }
            CHUNK
                if index < geom.chunk_count()
                    && n as usize == geom.chunk_len(index)
                    && at + n as u64 <= len =>
            {
                let d = &mut buf[..n as usize];
                file.read_exact_at(d, at)?;
                if chunk_hash(d) != hash {
                    break;
                }
                staged.push(Staged {
                    index,
                    at: Some(at),
                });
                at += n as u64;
            }
            ZERO if index < geom.chunk_count() && n == 0 && hash == zero.of(index) => {
                staged.push(Staged { index, at: None });
            }
            _ => break,
        }
        digest.update(&index.to_le_bytes());
        digest.update(&hash.to_le_bytes());
    }
    Ok((staged, None))
}

/// Finishes what a crash left in replica `name`'s journal, if anything: a committed round is
/// applied to `replica` (again), an unfinished one dropped; the journal is left empty.
pub fn recover(
    dir: &ReplicaDir,
    name: &str,
    replica: &mut ReplicaFile,
) -> Result<Recovered, RegionError> {
    let path = dir.display(&journal_name(name));
    let Some(file) = dir.open_existing_rw(&journal_name(name))? else {
        return Ok(Recovered::Nothing);
    };
    if file.metadata().map_err(io(&path))?.len() == 0 {
        return Ok(Recovered::Nothing);
    }
    let geom = *replica.geometry();
    let (staged, committed) = match journal_geometry(&file) {
        Some(g) if g == geom => read_round(&file, &geom).map_err(io(&path))?,
        // Written for another geometry (the region was resized since): nothing of it applies.
        _ => (Vec::new(), None),
    };
    let chunks = staged.len() as u64;
    let done = match committed {
        Some(generation) => {
            replay(&file, &geom, &staged, replica).map_err(io(&path))?;
            if generation > replica.committed() {
                replica.commit(generation).map_err(io(&path))?;
            }
            Recovered::Replayed { generation, chunks }
        }
        None => Recovered::Discarded { chunks },
    };
    file.set_len(0).map_err(io(&path))?;
    file.sync_data().map_err(io(&path))?;
    Ok(done)
}

/// The regions of `dir` whose journal holds something (a crash during a consistent round), with
/// the geometry it was written for.
pub fn pending_journals(dir: &ReplicaDir) -> Vec<(String, Geometry)> {
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let file_name = e.ok()?.file_name().into_string().ok()?;
            let name = file_name.strip_prefix('.')?.strip_suffix(".journal")?;
            memsync_protocol::wire::check_name(name).ok()?;
            let file = dir.open_existing_rw(&file_name).ok()??;
            Some((name.to_owned(), journal_geometry(&file)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom() -> Geometry {
        Geometry::new(64 << 10, 12).unwrap()
    }

    fn setup() -> (tempfile::TempDir, ReplicaDir, ReplicaFile) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ReplicaDir::open(tmp.path()).unwrap();
        let mut f = ReplicaFile::open(&dir, "r", geom(), false).unwrap();
        // Generation 1: every chunk holds 1.
        for i in 0..16 {
            f.write_chunk(i, Some(&[1; 4096])).unwrap();
        }
        f.commit(1).unwrap();
        (tmp, dir, f)
    }

    /// Stages generation 2 (chunks 3 and 9 hold 2, chunk 5 zeros).
    fn stage_2(j: &mut Journal) {
        j.stage(3, Some(&[2; 4096])).unwrap();
        j.stage(5, None).unwrap();
        j.stage(9, Some(&[2; 4096])).unwrap();
    }

    fn holds_2(f: &ReplicaFile) -> bool {
        let b = f.bytes();
        b[3 * 4096..4 * 4096].iter().all(|&x| x == 2)
            && b[5 * 4096..6 * 4096].iter().all(|&x| x == 0)
            && b[9 * 4096..10 * 4096].iter().all(|&x| x == 2)
    }

    fn holds_1(f: &ReplicaFile) -> bool {
        f.bytes().iter().all(|&x| x == 1)
    }

    #[test]
    fn a_round_reaches_the_replica_only_at_its_commit() {
        let (_t, dir, mut f) = setup();
        let mut j = Journal::create(&dir, "r", geom()).unwrap();
        stage_2(&mut j);
        assert!(holds_1(&f));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let heard = seen.clone();
        f.on_landed(move |chunks| heard.lock().unwrap().push(chunks));
        assert_eq!(j.apply(2, &mut f).unwrap(), 3);
        assert_eq!(*seen.lock().unwrap(), [3..4, 5..6, 9..10]);
        assert!(holds_2(&f));
        assert_eq!(recover(&dir, "r", &mut f).unwrap(), Recovered::Nothing);
    }

    #[test]
    fn an_unfinished_round_is_dropped() {
        let (_t, dir, mut f) = setup();
        let mut j = Journal::create(&dir, "r", geom()).unwrap();
        stage_2(&mut j);
        drop(j);
        assert_eq!(pending_journals(&dir).len(), 1);
        assert_eq!(
            recover(&dir, "r", &mut f).unwrap(),
            Recovered::Discarded { chunks: 3 }
        );
        assert!(holds_1(&f));
        assert!(pending_journals(&dir).is_empty());
    }

    #[test]
    fn a_committed_round_cut_short_is_applied_again() {
        let (_t, dir, mut f) = setup();
        let mut j = Journal::create(&dir, "r", geom()).unwrap();
        stage_2(&mut j);
        // The commit record is written and synced, then the crash, before (all of) the apply.
        let digest = j.digest.digest();
        j.file
            .write_all_at(&record(COMMIT, 3, 2, digest, j.round), j.end)
            .unwrap();
        f.write_chunk(3, Some(&[2; 4096])).unwrap();
        drop(j);
        assert_eq!(pending_journals(&dir), [("r".to_owned(), geom())]);
        assert_eq!(
            recover(&dir, "r", &mut f).unwrap(),
            Recovered::Replayed {
                generation: 2,
                chunks: 3
            }
        );
        assert!(holds_2(&f));
        assert_eq!(f.committed(), 2);
    }

    #[test]
    fn a_damaged_or_stale_round_is_never_applied() {
        // A payload byte flipped, a wrong digest, records of another round: each is dropped.
        for spoil in 0..3 {
            let (_t, dir, mut f) = setup();
            let mut j = Journal::create(&dir, "r", geom()).unwrap();
            stage_2(&mut j);
            let (mut digest, mut round) = (j.digest.digest(), j.round);
            match spoil {
                0 => j.file.write_all_at(&[7], HEADER + RECORD + 100).unwrap(),
                1 => digest ^= 1,
                _ => round ^= 1,
            }
            j.file
                .write_all_at(&record(COMMIT, 3, 2, digest, round), j.end)
                .unwrap();
            drop(j);
            let r = recover(&dir, "r", &mut f).unwrap();
            assert!(matches!(r, Recovered::Discarded { .. }), "{spoil}: {r:?}");
            assert!(holds_1(&f), "{spoil}");
        }
    }
}
