//! The object layout of a region in an object store (spec/STORAGE.md): object keys, chunk
//! names, claims and manifests, encoded and decoded here without any I/O. A manifest is checked
//! whole (its BLAKE3 trailer) before any field of it is believed.

use memsync_protocol::Geometry;

/// Length of a chunk's content address: BLAKE3-256.
pub const HASH_LEN: usize = 32;
/// A chunk's content address; all zeros for a chunk of zeros, which is not stored.
pub type ChunkName = [u8; HASH_LEN];
/// The name of a zero chunk in a manifest.
pub const ZERO: ChunkName = [0; HASH_LEN];

const MAGIC: &[u8; 8] = b"msyncman";
const FORMAT: u32 = 1;

/// Why a manifest or claim could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The bytes are not a manifest of this format, or were damaged.
    #[error("not a valid manifest: {0}")]
    Manifest(String),
    /// A claim's body is not `FINGERPRINT NONCE`.
    #[error("not a valid claim: {0}")]
    Claim(String),
}

/// The content address of a chunk's bytes: zeros name a zero chunk.
pub fn chunk_name(data: &[u8]) -> ChunkName {
    if memsync_protocol::hash::is_zero(data) {
        ZERO
    } else {
        *blake3::hash(data).as_bytes()
    }
}

/// Where a region lives in a store: objects under `root` (shared by every region there), and
/// the region's own under `root/regions/name/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    root: String,
    name: String,
}

impl Keys {
    /// The keys of region `name` under `root` (empty, or a path ending without a slash).
    pub fn new(root: &str, name: &str) -> Self {
        let root = root.trim_matches('/');
        let root = if root.is_empty() {
            String::new()
        } else {
            format!("{root}/")
        };
        Keys {
            root,
            name: name.to_owned(),
        }
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object holding a chunk's bytes.
    pub fn chunk(&self, name: &ChunkName) -> String {
        format!("{}chunks/{}", self.root, hex::encode(name))
    }

    /// The prefix every chunk object's key starts with.
    pub fn chunks(&self) -> String {
        format!("{}chunks/", self.root)
    }

    /// The claim of epoch `epoch`.
    pub fn claim(&self, epoch: u64) -> String {
        format!("{}{epoch:016x}", self.claims())
    }

    /// The prefix of the region's claims.
    pub fn claims(&self) -> String {
        format!("{}regions/{}/claims/", self.root, self.name)
    }

    /// The manifest of generation `generation` written at epoch `epoch`.
    pub fn manifest(&self, epoch: u64, generation: u64) -> String {
        format!("{}{epoch:016x}-{generation:016x}", self.manifests())
    }

    /// The prefix of the region's manifests.
    pub fn manifests(&self) -> String {
        format!("{}regions/{}/generations/", self.root, self.name)
    }

    /// The prefix under which every region of the root keeps its manifests and claims.
    pub fn regions(&self) -> String {
        format!("{}regions/", self.root)
    }

    /// The epoch of a claim key, if it is one of this region's.
    pub fn parse_claim(&self, key: &str) -> Option<u64> {
        parse_hex16(key.strip_prefix(&self.claims())?)
    }

    /// `(epoch, generation)` of a manifest key, if it is one of this region's.
    pub fn parse_manifest(&self, key: &str) -> Option<(u64, u64)> {
        parse_manifest_tail(key.strip_prefix(&self.manifests())?)
    }

    /// The chunk name of a chunk object's key.
    pub fn parse_chunk(&self, key: &str) -> Option<ChunkName> {
        let h = key.strip_prefix(&self.chunks())?;
        let mut out = [0; HASH_LEN];
        hex::decode_to_slice(h, &mut out).ok()?;
        (hex::encode(out) == h).then_some(out)
    }
}

/// `(epoch, generation)` of the last path segment of a manifest key (`EEEE…-GGGG…`).
pub fn parse_manifest_tail(tail: &str) -> Option<(u64, u64)> {
    let (e, g) = tail.split_once('-')?;
    Some((parse_hex16(e)?, parse_hex16(g)?))
}

fn parse_hex16(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// Who writes a region at an epoch: the peer's identity and a nonce of its process, so that two
/// processes of one peer are told apart too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    /// SHA-256 of the peer's certificate (its fingerprint, spec/PROTOCOL.md §2.2).
    pub fingerprint: [u8; 32],
    /// Random, per process.
    pub nonce: [u8; 16],
}

impl Writer {
    /// A claim object's body: `FINGERPRINT NONCE\n`, lowercase hex.
    pub fn claim_body(&self) -> Vec<u8> {
        format!(
            "{} {}\n",
            hex::encode(self.fingerprint),
            hex::encode(self.nonce)
        )
        .into_bytes()
    }

    /// Parses a claim object's body.
    pub fn parse_claim(body: &[u8]) -> Result<Writer, FormatError> {
        let bad = |why: &str| FormatError::Claim(why.to_owned());
        let text = std::str::from_utf8(body).map_err(|_| bad("not text"))?;
        let (f, n) = text
            .trim_end_matches('\n')
            .split_once(' ')
            .ok_or_else(|| bad("no nonce"))?;
        let mut w = Writer {
            fingerprint: [0; 32],
            nonce: [0; 16],
        };
        hex::decode_to_slice(f, &mut w.fingerprint).map_err(|_| bad("bad fingerprint"))?;
        hex::decode_to_slice(n, &mut w.nonce).map_err(|_| bad("bad nonce"))?;
        Ok(w)
    }
}

/// One generation of a region: its geometry, who wrote it, and the name of every chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The region's name.
    pub name: String,
    /// Size and chunk size.
    pub geometry: Geometry,
    /// The epoch it was written at.
    pub epoch: u64,
    /// Its generation (increasing within an epoch and across epochs).
    pub generation: u64,
    /// Who wrote it; readers check it against the epoch's claim.
    pub writer: Writer,
    /// When it was written, in milliseconds since the Unix epoch (the writer's clock).
    pub created_ms: u64,
    /// Chunks that changed since the generation before it (all, for the first).
    pub changed: u64,
    /// Bytes of chunk objects this generation uploaded.
    pub uploaded: u64,
    /// The name of each chunk, [`ZERO`] for zeros.
    pub chunks: Vec<ChunkName>,
}

impl Manifest {
    /// Chunks that are not zeros.
    pub fn stored(&self) -> u64 {
        self.chunks.iter().filter(|c| **c != ZERO).count() as u64
    }

    /// The manifest's bytes (spec/STORAGE.md "Manifests"), little-endian, with its trailer.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut b = Vec::with_capacity(128 + name.len() + HASH_LEN * self.chunks.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&FORMAT.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&self.geometry.size().to_le_bytes());
        b.push(self.geometry.shift());
        for v in [self.epoch, self.generation] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.writer.fingerprint);
        b.extend_from_slice(&self.writer.nonce);
        for v in [self.created_ms, self.changed, self.uploaded] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            b.extend_from_slice(c);
        }
        let trailer = blake3::hash(&b);
        b.extend_from_slice(trailer.as_bytes());
        b
    }

    /// Decodes and checks a manifest: its trailer, format, geometry and chunk count.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        let bad = |why: &str| FormatError::Manifest(why.to_owned());
        let body_len = bytes
            .len()
            .checked_sub(HASH_LEN)
            .ok_or_else(|| bad("too short"))?;
        let (body, trailer) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != trailer {
            return Err(bad("its checksum does not match (damaged or cut short)"));
        }
        let mut r = Reader(body);
        if r.take(8)? != MAGIC {
            return Err(bad("wrong magic"));
        }
        let format = u32::from_le_bytes(r.array()?);
        if format != FORMAT {
            return Err(bad(&format!("format {format}, this peer reads {FORMAT}")));
        }
        let name_len = u16::from_le_bytes(r.array()?) as usize;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| bad("the name is not UTF-8"))?
            .to_owned();
        let size = r.u64()?;
        let [shift] = r.array()?;
        let geometry = Geometry::new(size, shift).map_err(|e| bad(&e.to_string()))?;
        let (epoch, generation) = (r.u64()?, r.u64()?);
        let writer = Writer {
            fingerprint: r.array()?,
            nonce: r.array()?,
        };
        let (created_ms, changed, uploaded) = (r.u64()?, r.u64()?, r.u64()?);
        let count = r.u64()?;
        if count != geometry.chunk_count() {
            return Err(bad(&format!(
                "{count} chunks for a region of {}",
                geometry.chunk_count()
            )));
        }
        // Checked before anything is allocated for the table.
        if r.0.len() as u64 != count * HASH_LEN as u64 {
            return Err(bad("its chunk table has the wrong length"));
        }
        let chunks =
            r.0.chunks_exact(HASH_LEN)
                .map(|c| c.try_into().expect("HASH_LEN bytes"))
                .collect();
        Ok(Manifest {
            name,
            geometry,
            epoch,
            generation,
            writer,
            created_ms,
            changed,
            uploaded,
            chunks,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Manifest("cut short".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let geometry = Geometry::new(3 * 65536 + 100, 16).unwrap();
        Manifest {
            name: "vm1".into(),
            geometry,
            epoch: 2,
            generation: 7,
            writer: Writer {
                fingerprint: [0xab; 32],
                nonce: [0x01; 16],
            },
            created_ms: 1_764_000_000_000,
            changed: 2,
            uploaded: 65636,
            chunks: vec![chunk_name(b"a"), ZERO, chunk_name(b"b"), chunk_name(b"c")],
        }
    }

    #[test]
    fn a_manifest_decodes_to_what_was_encoded() {
        let m = manifest();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.stored(), 3);
    }

    #[test]
    fn a_damaged_or_cut_manifest_is_refused() {
        let bytes = manifest().encode();
        for i in [0, 9, 40, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(Manifest::decode(&b).is_err(), "flipped byte {i}");
        }
        for n in [0, 10, bytes.len() - 33, bytes.len() - 1] {
            assert!(Manifest::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn a_manifest_whose_table_disagrees_with_its_geometry_is_refused() {
        let mut m = manifest();
        m.chunks.pop();
        let e = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(e.contains("3 chunks for a region of 4"), "{e}");
    }

    #[test]
    fn keys_sort_by_epoch_then_generation_and_parse_back() {
        let k = Keys::new("fleet/a/", "vm1");
        assert_eq!(
            k.chunk(&[0x11; 32]),
            format!("fleet/a/chunks/{}", "11".repeat(32))
        );
        assert_eq!(k.parse_chunk(&k.chunk(&[0x11; 32])), Some([0x11; 32]));
        let (a, b, c) = (k.manifest(1, 900), k.manifest(2, 3), k.manifest(2, 10));
        assert!(a < b && b < c);
        assert_eq!(k.parse_manifest(&c), Some((2, 10)));
        assert_eq!(k.parse_claim(&k.claim(5)), Some(5));
        assert_eq!(
            k.parse_manifest("fleet/a/regions/vm1/generations/x-y"),
            None
        );
        assert_eq!(
            Keys::new("", "r").claim(1),
            "regions/r/claims/0000000000000001"
        );
    }

    #[test]
    fn a_claim_round_trips_and_garbage_is_refused() {
        let w = manifest().writer;
        assert_eq!(Writer::parse_claim(&w.claim_body()).unwrap(), w);
        assert!(Writer::parse_claim(b"nonsense").is_err());
        assert!(Writer::parse_claim(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn zero_chunks_are_named_zero() {
        assert_eq!(chunk_name(&[0; 4096]), ZERO);
        assert_ne!(chunk_name(&[1; 4096]), ZERO);
    }
}
