//! What a promotion keeps of a replica (`peer promote`): the generation it held and the hash of
//! every chunk then, in DIR/.NAME.promoted, so that the new owner can tell, when it reconciles a
//! replica, the writes that only a fenced owner made (discarded) from its own since. An rkyv
//! archive, validated on load; one that does not describe the region is not used.

use super::{io, RegionError, ReplicaDir, ReplicaFile};
use memsync_protocol::Geometry;
use rkyv::rancor;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: [u8; 8] = *b"msyncpro";
const FORMAT: u32 = 1;

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Layout {
    magic: [u8; 8],
    format: u32,
    name: String,
    size: u64,
    chunk_shift: u8,
    generation: u64,
    hashes: Vec<u64>,
}

/// A replica as it was promoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// The last generation it acknowledged to the owner that was lost.
    pub generation: u64,
    /// The hash of each of its chunks then.
    pub hashes: Vec<u64>,
}

fn file_name(name: &str) -> String {
    format!(".{name}.promoted")
}

impl Promotion {
    /// Records replica `name` of `dir` as it is (its index proves its hashes; hot extents are read
    /// again), on stable storage. `None` when it has no index to tell its geometry (a replica made
    /// before indexes): there is then nothing to compare with later.
    pub fn record(dir: &ReplicaDir, name: &str) -> Result<Option<Promotion>, RegionError> {
        let Some(geom) = super::index::recorded_geometry(dir, name) else {
            return Ok(None);
        };
        // Opening a replica of another size would resize it: a file changed behind the index is
        // left alone.
        let path = dir.display(name);
        let len = match dir.open_existing(name)? {
            Some(f) => f.metadata().map_err(io(&path))?.len(),
            None => return Ok(None),
        };
        if len != geom.size() {
            return Ok(None);
        }
        let replica = ReplicaFile::open(dir, name, geom, true)?;
        let p = Promotion {
            generation: replica.committed(),
            hashes: replica.hashes().to_vec(),
        };
        let layout = Layout {
            magic: MAGIC,
            format: FORMAT,
            name: name.to_owned(),
            size: geom.size(),
            chunk_shift: geom.shift(),
            generation: p.generation,
            hashes: p.hashes.clone(),
        };
        let path = dir.display(&file_name(name));
        let bytes = rkyv::to_bytes::<rancor::Error>(&layout)
            .map_err(|e| io(&path)(std::io::Error::other(e)))?;
        let file = dir.create(&file_name(name))?;
        file.set_len(0).map_err(io(&path))?;
        file.write_all_at(&bytes, 0).map_err(io(&path))?;
        file.sync_data().map_err(io(&path))?;
        dir.sync()?;
        Ok(Some(p))
    }

    /// The promotion recorded beside region file `path` (named `name`, of geometry `geom`), if
    /// there is one that describes it. Err: why the one there is not used.
    pub fn load(path: &Path, name: &str, geom: &Geometry) -> Result<Option<Promotion>, String> {
        let at = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(file_name(name));
        let bytes = match std::fs::read(&at) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", at.display())),
        };
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let a = rkyv::access::<ArchivedLayout, rancor::Error>(&aligned)
            .map_err(|e| format!("{} is not a valid promotion record ({e})", at.display()))?;
        if a.magic != MAGIC || a.format.to_native() != FORMAT || a.name.as_str() != name {
            return Err(format!("{} describes another region", at.display()));
        }
        if a.size.to_native() != geom.size()
            || a.chunk_shift != geom.shift()
            || a.hashes.len() as u64 != geom.chunk_count()
        {
            return Err(format!(
                "{} describes another geometry (the region was promoted with {}-byte chunks)",
                at.display(),
                1u64 << a.chunk_shift.min(63)
            ));
        }
        Ok(Some(Promotion {
            generation: a.generation.to_native(),
            hashes: a.hashes.iter().map(|h| h.to_native()).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_is_kept_and_only_a_valid_matching_record_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ReplicaDir::open(tmp.path()).unwrap();
        let geom = Geometry::new(5 << 12, 12).unwrap();
        let file = tmp.path().join("r");
        assert_eq!(Promotion::load(&file, "r", &geom), Ok(None));
        // No replica, or no index to tell its geometry: nothing is kept.
        assert_eq!(Promotion::record(&dir, "r").unwrap(), None);
        drop(ReplicaFile::open(&dir, "r", geom, false).unwrap());
        let kept = Promotion::record(&dir, "r").unwrap().unwrap();
        assert_eq!(kept.hashes.len(), 5);
        assert_eq!(Promotion::load(&file, "r", &geom), Ok(Some(kept)));
        assert!(Promotion::load(&file, "r", &Geometry::new(5 << 12, 13).unwrap()).is_err());
        let record = tmp.path().join(".r.promoted");
        let mut bytes = std::fs::read(&record).unwrap();
        std::fs::copy(&record, tmp.path().join(".q.promoted")).unwrap();
        assert!(Promotion::load(&tmp.path().join("q"), "q", &geom).is_err());
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&record, &bytes).unwrap();
        assert!(Promotion::load(&file, "r", &geom).is_err());
    }
}
