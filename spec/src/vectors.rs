//! Parser for the golden frame vectors in `spec/vectors/*.vec` (format: `spec/vectors/README.md`).
//!
//! Dependency-free (std only) so that other crates' tests can include this file with `#[path]`
//! without a dependency on this crate. It is test support: malformed files panic with a message
//! naming the file and line.

use std::fmt;
use std::path::Path;

/// What decoding a vector's bytes must yield.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// One whole, valid frame that uses every byte.
    Ok,
    /// The bytes are a prefix of a frame: the decoder asks for more.
    Incomplete,
    /// Decoding (or the geometry check) fails with this error code name, e.g. `MALFORMED`.
    Error(String),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Ok => f.write_str("ok"),
            Expect::Incomplete => f.write_str("incomplete"),
            Expect::Error(code) => write!(f, "error {code}"),
        }
    }
}

/// One golden vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vector {
    /// The file name without `.vec`.
    pub name: String,
    /// The comment lines other than `expect:` and `geometry:`, joined with spaces.
    pub description: String,
    pub expect: Expect,
    /// Region size and chunk shift to check the frame against, if any.
    pub geometry: Option<(u64, u8)>,
    pub bytes: Vec<u8>,
}

/// Parses the text of one `.vec` file. Panics with a message naming `name` on malformed input.
pub fn parse(name: &str, text: &str) -> Vector {
    let fail = |line: usize, msg: &str| -> ! { panic!("{name}.vec:{line}: {msg}") };
    let mut description = Vec::new();
    let mut expect = None;
    let mut geometry = None;
    let mut bytes = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if let Some(v) = comment.strip_prefix("expect:") {
                if expect.is_some() {
                    fail(line_no, "second `expect:` line");
                }
                expect = Some(parse_expect(v.trim()).unwrap_or_else(|m| fail(line_no, &m)));
            } else if let Some(v) = comment.strip_prefix("geometry:") {
                if geometry.is_some() {
                    fail(line_no, "second `geometry:` line");
                }
                geometry = Some(parse_geometry(v.trim()).unwrap_or_else(|m| fail(line_no, &m)));
            } else if !comment.is_empty() {
                description.push(comment.to_owned());
            }
            continue;
        }
        for tok in line.split_whitespace() {
            bytes.push(parse_byte(tok).unwrap_or_else(|m| fail(line_no, &m)));
        }
    }
    let Some(expect) = expect else {
        panic!("{name}.vec: no `# expect:` line")
    };
    if description.is_empty() {
        panic!("{name}.vec: no description comment");
    }
    Vector {
        name: name.to_owned(),
        description: description.join(" "),
        expect,
        geometry,
        bytes,
    }
}

fn parse_expect(v: &str) -> Result<Expect, String> {
    let mut words = v.split_whitespace();
    let e = match (words.next(), words.next()) {
        (Some("ok"), None) => Expect::Ok,
        (Some("incomplete"), None) => Expect::Incomplete,
        (Some("error"), Some(code))
            if !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
        {
            Expect::Error(code.to_owned())
        }
        _ => {
            return Err(format!(
                "bad expectation {v:?}: want `ok`, `incomplete` or `error CODE_NAME`"
            ))
        }
    };
    if words.next().is_some() {
        return Err(format!("bad expectation {v:?}: extra words"));
    }
    Ok(e)
}

fn parse_geometry(v: &str) -> Result<(u64, u8), String> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    match parts.as_slice() {
        [size, shift] => match (size.parse::<u64>(), shift.parse::<u8>()) {
            (Ok(size), Ok(shift)) => Ok((size, shift)),
            _ => Err(format!("bad geometry {v:?}: want `SIZE SHIFT` in decimal")),
        },
        _ => Err(format!("bad geometry {v:?}: want `SIZE SHIFT`")),
    }
}

fn parse_byte(tok: &str) -> Result<u8, String> {
    if tok.len() != 2 || !tok.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad byte {tok:?}: want two hex digits"));
    }
    u8::from_str_radix(tok, 16).map_err(|e| format!("bad byte {tok:?}: {e}"))
}

/// Loads every `*.vec` file of `dir`, sorted by name. Panics if the directory cannot be read or a
/// file is malformed.
pub fn load_dir(dir: &Path) -> Vec<Vector> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read vector directory {}: {e}", dir.display()));
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("vec") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_else(|| panic!("vector file name {} is not UTF-8", path.display()))
            .to_owned();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        out.push(parse(&name, &text));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_vector() {
        let v = parse(
            "x",
            "# A frame\n# over two lines\n# expect: error OUT_OF_RANGE\n# geometry: 8193 12\n\
             d5 22 00 00\n08 00 00 00\n",
        );
        assert_eq!(v.description, "A frame over two lines");
        assert_eq!(v.expect, Expect::Error("OUT_OF_RANGE".into()));
        assert_eq!(v.geometry, Some((8193, 12)));
        assert_eq!(v.bytes, [0xd5, 0x22, 0, 0, 8, 0, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "x.vec:2: bad byte")]
    fn rejects_bad_hex() {
        parse("x", "# d\nd5 2\n# expect: ok\n");
    }

    #[test]
    #[should_panic(expected = "no `# expect:` line")]
    fn requires_expect() {
        parse("x", "# d\nd5\n");
    }
}
