//! Support code shared by the fuzz targets in `fuzz_targets/`: a byte reader that turns fuzz input
//! into choices, an executable model of the codec rules of spec/PROTOCOL.md §3–§5 written
//! independently of `memsync_protocol::wire`, and small helpers.
//!
//! Nothing here links libFuzzer; the targets do.

pub mod model;

pub use memsync_protocol::sim::decode_exact;

/// Reads choices from fuzz input, little-endian. Past the end every read yields zeros, so any
/// input is a complete scenario (`fuzz/gen_seeds.py` writes seeds in this format).
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (h, t) = self.data.split_at(n);
        self.data = t;
        h
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let src = self.bytes(N);
        b[..src.len()].copy_from_slice(src);
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }

    /// A value in `0..n` (`n > 0`) from one byte, or from a u32 when `n > 256`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        if n <= 256 {
            self.u8() as u64 % n
        } else {
            self.u32() as u64 % n
        }
    }
}

/// A valid region name (spec §5.3) made from arbitrary bytes: 1..=len bytes of the name alphabet,
/// never starting with `.`.
pub fn name_from(bytes: &[u8], max_len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
    let mut s: String = bytes
        .iter()
        .take(max_len.clamp(1, 255))
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    if s.is_empty() {
        s.push('r');
    }
    if s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    s
}

/// True when `MEMSYNC_FUZZ_SKIP_KNOWN=1`: harnesses then stop an input as soon as it reaches a
/// known, reported and still open bug in memsync-protocol (see README.md, "Findings") instead of
/// letting it crash, so that a fuzzing run can look for other bugs. Unset (the default, and how
/// `.ci/fuzz.sh` replays seeds and regressions), every bug crashes.
pub fn skip_known_bugs() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var("MEMSYNC_FUZZ_SKIP_KNOWN").is_ok_and(|v| v == "1"))
}

/// True when `MEMSYNC_FUZZ_TRACE=1`: the machine harnesses print each step to stderr (for
/// reading a crashing input: `MEMSYNC_FUZZ_TRACE=1 fuzz/target/…/owner_machine crash-…`).
pub fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var("MEMSYNC_FUZZ_TRACE").is_ok_and(|v| v == "1"))
}

/// `eprintln!` when tracing.
#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => {
        if $crate::tracing() {
            eprintln!($($t)*);
        }
    };
}

pub fn hex(b: &[u8]) -> String {
    let shown = &b[..b.len().min(64)];
    let mut s: String = shown.iter().map(|x| format!("{x:02x}")).collect();
    if b.len() > shown.len() {
        s.push_str(&format!("… ({} bytes)", b.len()));
    }
    s
}
