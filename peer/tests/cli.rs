//! The everyday command line: version, completions, the manual page, and log lines without ANSI
//! escapes when stderr is not a terminal.

mod support;

use std::process::Command;
use support::BIN;

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN).args(args).output().expect("running peer");
    assert!(
        out.status.success(),
        "peer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn version_names_the_crate_version() {
    let out = String::from_utf8(run(&["--version"]).stdout).unwrap();
    assert_eq!(out.trim(), format!("peer {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = String::from_utf8(run(&["completions", shell]).stdout).unwrap();
        // Every subcommand is completed, down to the newest.
        for sub in ["serve", "sync", "migrate", "mount", "uffd"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let bash = String::from_utf8(run(&["completions", "bash"]).stdout).unwrap();
    assert!(
        bash.contains("--downtime-ms"),
        "bash completion lacks migrate's flags"
    );
    let man = String::from_utf8(run(&["man"]).stdout).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH peer"),
        "not roff: {man:.200}"
    );
    assert!(man.contains("migrate"));
}

#[test]
fn logs_carry_no_ansi_escapes_when_not_on_a_terminal() {
    // stderr is a pipe here; the demo logs (info) and exits.
    let out = Command::new(BIN)
        .args([
            "demo",
            "--size-mib",
            "4",
            "--seconds",
            "1",
            "--writes-per-sec",
            "100",
        ])
        .env_remove("NO_COLOR")
        .output()
        .expect("running the demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = [out.stdout, out.stderr].concat();
    assert!(!log.is_empty(), "the demo logged nothing");
    assert!(
        !log.contains(&0x1b),
        "an escape in: {}",
        String::from_utf8_lossy(&log)
    );
}

#[test]
fn sizes_and_durations_are_read_with_their_units() {
    let refused = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "accepted {args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let sync = ["sync", "--region", "/nonexistent", "--peer", "127.0.0.1:9"];
    let e = refused(&[&sync[..], &["--interval", "soon"]].concat());
    assert!(e.contains("not a duration"), "{e}");
    let e = refused(&[&sync[..], &["--max-rate", "100KiB"]].concat());
    assert!(e.contains("below 1 MiB/s"), "{e}");
    // 3 KiB parses as a size, then is refused as a chunk size, in KiB-aware words.
    let e = refused(&[&sync[..], &["--chunk-size", "3KiB", "--interval", "250ms"]].concat());
    assert!(
        e.contains("--chunk-size 3.0 KiB must be a power of two from 4 KiB"),
        "{e}"
    );
}
