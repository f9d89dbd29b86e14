#!/usr/bin/env python3
"""Test helpers for the VM move (peer/tests/vm.rs).

  guest.py initramfs BUSYBOX OUT      a busybox initramfs (cpio newc) whose /init prints
                                      "TICK n" on the serial console every 100 ms, n counting
                                      in guest RAM
  guest.py qmp SOCKET COMMAND [JSON]  one QMP command; `migrate` waits until it completed
"""
import json, os, socket, sys, time

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc && /bin/busybox mount -t proc proc /proc
i=0
while true; do
  i=$((i+1))
  echo "TICK $i"
  /bin/busybox usleep 100000
done
"""

def cpio(entries):
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        n = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + n
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)

def initramfs(busybox, dest):
    bb = open(busybox, "rb").read()
    image = cpio([("bin", 0o40755, b""), ("bin/busybox", 0o100755, bb),
                  ("dev", 0o40755, b""), ("init", 0o100755, INIT.encode())])
    open(dest, "wb").write(image)

def qmp(path, command, args=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    def call(cmd, arguments=None):
        msg = {"execute": cmd}
        if arguments:
            msg["arguments"] = arguments
        f.write(json.dumps(msg) + "\n"); f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                sys.exit(f"qmp {cmd}: {reply['error']}")
    json.loads(f.readline())  # greeting
    call("qmp_capabilities")
    result = call(command, args)
    if command == "migrate":
        while True:
            st = call("query-migrate")
            if st.get("status") == "completed":
                break
            if st.get("status") in ("failed", "cancelled"):
                sys.exit(f"migration {st}")
            time.sleep(0.005)
    print(json.dumps(result))

if __name__ == "__main__":
    if sys.argv[1] == "initramfs":
        initramfs(sys.argv[2], sys.argv[3])
    else:
        qmp(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else None)
