//! Config files: one file's [serve] and [sync] tables run a real serve and sync (systemd's
//! readiness message arriving on $NOTIFY_SOCKET), a command-line flag overrides the file's, and
//! each kind of invalid file is refused with its file, line and key.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

#[test]
fn a_config_file_runs_serve_and_sync_and_the_command_line_overrides_it() {
    let w = World::new();
    let file = w.random_file("data", 1 << 20);
    let conf = w.path("memsync.toml");
    std::fs::write(
        &conf,
        format!(
            "# both sides in one file\n[serve]\nlisten = \"{addr}\"\ndir = \"{dir}\"\n\
             identity = \"{rid}\"\ntrust = [\"{ofp}\"]\n\n[sync]\npeer = \"{addr}\"\n\
             identity = \"{oid}\"\ntrust = [\"{rfp}\"]\nregion = [\"{file}\"]\nname = \"orig\"\n\
             once = true\ninterval = 50\n",
            addr = w.addr(),
            dir = w.path("replicas").display(),
            rid = w.path("replica-id").display(),
            oid = w.path("owner-id").display(),
            ofp = w.owner_fp,
            rfp = w.replica_fp,
            file = file.display(),
        ),
    )
    .unwrap();
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
    let notify = w.path("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let serve = Proc::spawn(
        Command::new(BIN)
            .args(["serve", "--config", conf.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &notify),
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 from serve");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim_end(), "READY=1");
    serve.wait_for("serving replicas", Duration::from_secs(10));
    // The command line's --name wins over the file's.
    let mut sync = Proc::start(&[
        "sync",
        "--config",
        conf.to_str().unwrap(),
        "--name",
        "renamed",
    ]);
    assert!(
        sync.wait(Duration::from_secs(60)).success(),
        "{}",
        sync.output()
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(w.replica("renamed")).unwrap()
    );
    assert!(!w.replica("orig").exists());
}

/// Runs `peer sync --config` on a file with `body`; returns its stderr (it must fail).
fn refused(w: &World, body: &str) -> String {
    let conf = w.path("bad.toml");
    std::fs::write(&conf, body).unwrap();
    let out = Command::new(BIN)
        .args(["sync", "--config", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "accepted: {body}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(conf.to_str().unwrap()), "no file named: {err}");
    err
}

#[test]
fn each_kind_of_invalid_config_is_refused_with_file_line_and_key() {
    let w = World::new();
    let at = |line: usize| format!("bad.toml:{line}:");
    // An unknown key, with the known ones listed.
    let e = refused(&w, "[sync]\npeer = \"127.0.0.1:1\"\nintervall = 5\n");
    assert!(
        e.contains(&at(3)) && e.contains("`intervall`") && e.contains("known: "),
        "{e}"
    );
    // A list where one value goes.
    let e = refused(&w, "[sync]\n\npeer = [\"a\", \"b\"]\n");
    assert!(
        e.contains(&at(3)) && e.contains("`peer`") && e.contains("not a list"),
        "{e}"
    );
    // A value its flag does not take.
    let e = refused(&w, "[sync]\nchunk_size = \"big\"\n");
    assert!(
        e.contains(&at(2)) && e.contains("`chunk_size`") && e.contains("big"),
        "{e}"
    );
    // A switch given something else than true or false.
    let e = refused(&w, "[sync]\nonce = \"yes\"\n");
    assert!(e.contains(&at(2)) && e.contains("`once`"), "{e}");
    // A table where a value goes.
    let e = refused(&w, "[sync]\npeer = { host = \"a\" }\n");
    assert!(e.contains(&at(2)) && e.contains("`peer`"), "{e}");
    // Not TOML at all: the parser's line.
    let e = refused(&w, "[sync]\npeer = \"unterminated\n");
    assert!(e.contains("line 2"), "{e}");
}
