#!/usr/bin/env python3
"""Does this kernel lose a page of a process frozen while it writes a shared file mapping?

Found while chasing the rare failure of migrate.rs's there-and-back test (a page of B's copy read
0 after B's writer was frozen), and reproduced here without memsync: a file of 16 MiB is filled
with pwrite(2) and fdatasync(2), as `peer serve` fills a replica; a writer process maps it shared
and increments a counter at the start of random pages, as the test's writer does; it is stopped
with SIGSTOP (or frozen through cgroup.freeze, with --cgroup DIR of a cgroup v2), as `peer
migrate --freeze-pid` / `--freeze-cgroup` stop it; then the file is read with read(2). A page whose
counter is below what was written before the writer started was lost: no process ever wrote it
lower. On 2026-12-04, kernel 6.18.44-fc, it happened in about 1-2 % of the iterations, on ext4 and
on tmpfs, with SIGSTOP and with the cgroup freezer alike; a writer that stops itself (no signal,
no freezer) lost nothing in 250 iterations.

Usage: frozen_writer_loses_a_page.py [ITERATIONS] [DIR] [--cgroup CGROUP_DIR]; exits 1 if a page
was lost.
"""
import os, random, signal, struct, subprocess, sys, time

SIZE = 16 << 20
PAGES = SIZE // 4096
WRITER = r"""
import mmap, random, struct, sys
f = open(sys.argv[1], "r+b")
m = mmap.mmap(f.fileno(), 0)
pages = len(m) // 4096
while True:
    i = random.randrange(pages) * 4096
    struct.pack_into("<Q", m, i, struct.unpack_from("<Q", m, i)[0] + 1)
"""


def counters(path):
    b = open(path, "rb").read()
    return [struct.unpack_from("<Q", b, p * 4096)[0] for p in range(PAGES)]


def stopped(pid):
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        time.sleep(0.0002)


def frozen(cg, v):
    open(f"{cg}/cgroup.freeze", "w").write(str(v))
    while f"frozen {v}" not in open(f"{cg}/cgroup.events").read():
        time.sleep(0.0002)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    cg = sys.argv[sys.argv.index("--cgroup") + 1] if "--cgroup" in sys.argv else None
    if cg in args:
        args.remove(cg)
    iterations = int(args[0]) if args else 200
    base = args[1] if len(args) > 1 else "/tmp"
    if cg:
        os.makedirs(cg, exist_ok=True)
    lost = 0
    for it in range(iterations):
        path = os.path.join(base, f"frozen-writer-{os.getpid()}-{it}")
        data = bytearray(SIZE)
        for p in range(PAGES):
            struct.pack_into("<Q", data, p * 4096, 300 + random.randrange(100))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, SIZE)
        for off in range(0, SIZE, 65536):
            os.pwrite(fd, data[off:off + 65536], off)
        os.fdatasync(fd)
        before = counters(path)
        w = subprocess.Popen([sys.executable, "-c", WRITER, path])
        if cg:
            open(f"{cg}/cgroup.procs", "w").write(str(w.pid))
        time.sleep(0.4)
        if cg:
            frozen(cg, 1)
        else:
            w.send_signal(signal.SIGSTOP)
            stopped(w.pid)
        after = counters(path)
        w.kill()
        w.wait()
        if cg:
            frozen(cg, 0)
        gone = [(p, before[p], after[p]) for p in range(PAGES) if after[p] < before[p]]
        if gone:
            lost += 1
            print(f"iteration {it}: (page, before, after) {gone[:8]}", flush=True)
        os.close(fd)
        os.unlink(path)
    print(f"{lost} of {iterations} iterations lost a page")
    sys.exit(1 if lost else 0)


main()
