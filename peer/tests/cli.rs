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
