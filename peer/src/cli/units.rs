//! Human sizes and durations in flags: a plain number is in the flag's own unit (bytes for
//! `--chunk-size`, MiB/s for rates, milliseconds or seconds as the flag says), and a number with a
//! unit is read as written: `64KiB`, `4 MiB`, `1.5GB` (parse-size: KiB = 1024, kB = 1000),
//! `250ms`, `2s`, `1m30s` (humantime).

use std::time::Duration;

/// Bytes: `65536`, `64KiB`, `4MiB`.
pub fn bytes(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| format!("{s:?} is not a size: {e}"))
}

/// A rate in MiB/s: `200` (MiB/s), `200MiB`, `1GiB`, `500MB`; at least 1 MiB/s.
pub fn mib_per_sec(s: &str) -> Result<u64, String> {
    let mib = match s.trim().parse::<u64>() {
        Ok(n) => n,
        Err(_) => bytes(s.trim().trim_end_matches("/s"))? >> 20,
    };
    if mib == 0 {
        return Err(format!("{s:?} is below 1 MiB/s"));
    }
    Ok(mib)
}

fn duration(s: &str, plain: fn(u64) -> Duration) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(n) => Ok(plain(n)),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}")),
    }
}

/// Milliseconds: `300` (ms), `300ms`, `2s`.
pub fn millis(s: &str) -> Result<u64, String> {
    Ok(duration(s, Duration::from_millis)?.as_millis() as u64)
}

/// Seconds: `60` (s), `2m`, `90s`; a fraction of a second counts as a whole one.
pub fn secs(s: &str) -> Result<u64, String> {
    let d = duration(s, Duration::from_secs)?;
    Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Seconds, at least one.
pub fn secs_min_1(s: &str) -> Result<u64, String> {
    match secs(s)? {
        0 => Err(format!("{s:?} is below one second")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_keep_the_flag_unit_and_units_are_read_as_written() {
        assert_eq!(bytes("65536"), Ok(65536));
        assert_eq!(bytes("64KiB"), Ok(65536));
        assert_eq!(bytes("4 MiB"), Ok(4 << 20));
        assert!(bytes("big").is_err());
        assert_eq!(mib_per_sec("200"), Ok(200));
        assert_eq!(mib_per_sec("1GiB"), Ok(1024));
        assert_eq!(mib_per_sec("512MiB/s"), Ok(512));
        assert!(mib_per_sec("100KiB").is_err());
        assert!(mib_per_sec("0").is_err());
        assert_eq!(millis("300"), Ok(300));
        assert_eq!(millis("2s"), Ok(2000));
        assert_eq!(millis("250ms"), Ok(250));
        assert_eq!(secs("60"), Ok(60));
        assert_eq!(secs("2m"), Ok(120));
        assert_eq!(secs("1500ms"), Ok(2));
        assert!(secs_min_1("0").is_err());
        assert!(millis("soon").is_err());
    }
}
