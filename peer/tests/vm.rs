//! A real VM moved by memsync: QEMU (TCG) runs a guest whose RAM is a shared file and which
//! prints a counter kept in guest RAM on its serial console. memsync pre-copies the RAM file to B
//! while the guest runs; at the freeze the guest is stopped over QMP (the `--before-freeze` hook);
//! after the handoff QEMU's own migration carries only the device state (`x-ignore-shared`) to a
//! QEMU at B whose RAM is B's replica, and B continues (the `--after-handoff` hook). The counter
//! must continue at B without a gap or a repeat.
//!
//! The guest is Debian's kernel and a busybox initramfs; `test.sh` fetches both into
//! `target/vm` (or `$MEMSYNC_VM_DIR`) and installs `qemu-system-x86`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const RAM_MIB: u64 = 128;

fn assets() -> PathBuf {
    std::env::var_os("MEMSYNC_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm"))
}

fn helper() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vm/guest.py")
        .display()
        .to_string()
}

/// A QEMU guest with its RAM in `ram` (shared), serial console to `serial`, QMP on `qmp`.
struct Vm(Child);

impl Vm {
    fn start(ram: &Path, serial: &Path, qmp: &Path, extra: &[&str]) -> Vm {
        let a = assets();
        let initrd = ram.with_extension("initrd");
        let made = Command::new("python3")
            .args([&helper(), "initramfs"])
            .arg(a.join("busybox"))
            .arg(&initrd)
            .status()
            .unwrap();
        assert!(made.success(), "building the initramfs");
        let memory = format!(
            "memory-backend-file,id=mem,mem-path={},share=on,size={RAM_MIB}M",
            ram.display()
        );
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", &format!("{RAM_MIB}M")])
            .args(["-object", &memory, "-numa", "node,memdev=mem"])
            .arg("-kernel")
            .arg(a.join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-serial", &format!("file:{}", serial.display())])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (test.sh installs it)");
        Vm(child)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shell command sending QMP `command` (JSON `args`) to the socket `qmp`.
fn qmp_cmd(qmp: &Path, command: &str, args: &str) -> String {
    format!(
        "python3 {} qmp {} {command} '{args}'",
        helper(),
        qmp.display()
    )
}

fn qmp(qmp: &Path, command: &str, args: &str) {
    let ok = Command::new("sh")
        .args(["-c", &qmp_cmd(qmp, command, args)])
        .status()
        .unwrap();
    assert!(ok.success(), "QMP {command} {args}");
}

/// The TICK numbers of the complete lines the guest printed on `serials`, read one after the
/// other (a line the guest began at A may end at B).
fn ticks(serials: &[&Path]) -> Vec<u64> {
    let text: String = serials
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix("TICK ")?.parse().ok())
        .collect()
}

fn wait_ticks(serials: &[&Path], n: usize, what: &str) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = ticks(serials);
        if t.len() >= n {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: {} ticks", t.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_vm_moves_to_b_and_its_counter_continues_without_a_gap_or_a_repeat() {
    for f in ["vmlinuz", "busybox"] {
        assert!(
            assets().join(f).exists(),
            "{} missing: run `bash test.sh` (it fetches the guest)",
            assets().join(f).display()
        );
    }
    let w = World::new_in(Path::new("/dev/shm"));
    let _serve_b = w.serve();
    let (ram_a, ram_b) = (w.path("vm.ram"), w.replica("vm.ram"));
    let (qmp_a, qmp_b) = (w.path("qmp-a"), w.path("qmp-b"));
    let (serial_a, serial_b) = (w.path("serial-a"), w.path("serial-b"));
    let port = free_tcp_port();
    let _vm_a = Vm::start(&ram_a, &serial_a, &qmp_a, &[]);
    // B's QEMU maps B's replica file and waits for the device state.
    let incoming = format!("tcp:127.0.0.1:{port}");
    let _vm_b = Vm::start(&ram_b, &serial_b, &qmp_b, &["-incoming", &incoming]);
    wait_ticks(&[&serial_a], 20, "the guest at A did not start");
    let ignore_shared = r#"{"capabilities":[{"capability":"x-ignore-shared","state":true}]}"#;
    qmp(&qmp_a, "migrate-set-capabilities", ignore_shared);
    qmp(&qmp_b, "migrate-set-capabilities", ignore_shared);

    let stamps = w.path("stamps");
    let stamp = |what: &str| format!("echo {what} $(date +%s%N) >> {}", stamps.display());
    let before_freeze = format!(
        "{} && {} && {}",
        stamp("stop"),
        qmp_cmd(&qmp_a, "stop", "{}"),
        stamp("stopped")
    );
    let after_handoff = format!(
        "{} && {} && {} && {} && {}",
        stamp("handed"),
        qmp_cmd(&qmp_a, "migrate", &format!(r#"{{"uri":"{incoming}"}}"#)),
        stamp("migrated"),
        qmp_cmd(&qmp_b, "cont", "{}"),
        stamp("cont")
    );
    let out = Command::new(BIN)
        .args([
            "migrate",
            "--region",
            ram_a.to_str().unwrap(),
            "--peer",
            &w.addr(),
        ])
        .args(["--identity", w.path("owner-id").to_str().unwrap()])
        .args(["--trust", &w.replica_fp])
        .args(["--before-freeze", &before_freeze])
        .args(["--after-handoff", &after_handoff])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed:\n{}{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");

    // A is stopped for good: its last tick is final. B's guest continues from B's copy of RAM,
    // so A's serial output followed by B's counts on without a gap or a repeat.
    let at_a = ticks(&[&serial_a]);
    let before = at_a.len();
    let all = wait_ticks(
        &[&serial_a, &serial_b],
        before + 10,
        "the guest at B did not continue",
    );
    assert!(
        all.windows(2).all(|p| p[1] == p[0] + 1),
        "the counter skipped or repeated across the move (A ended at {:?}): {:?}",
        at_a.last(),
        &all[before.saturating_sub(3)..]
    );
    let stamps = std::fs::read_to_string(&stamps).unwrap();
    let at = |what: &str| -> u64 {
        stamps
            .lines()
            .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
            .unwrap()
    };
    let ms = |from: &str, to: &str| (at(to) - at(from)) as f64 / 1e6;
    eprintln!(
        "guest paused {:.1} ms from stop at A to cont at B: QMP stop {:.1} ms, memsync's last \
         round and handoff {:.1} ms, QEMU's device state {:.1} ms, QMP cont {:.1} ms",
        ms("stop ", "cont "),
        ms("stop ", "stopped "),
        ms("stopped ", "handed "),
        ms("handed ", "migrated "),
        ms("migrated ", "cont ")
    );
}
