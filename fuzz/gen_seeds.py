#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from spec/vectors/*.vec.

Python 3 standard library only. Deterministic: running it again gives the same files. It deletes
and rewrites fuzz/seeds/. The machine targets (replica_machine, owner_machine, converge) read their
input with memsync_fuzz::Input (little-endian integers, `below(n)` = one byte mod n for n <= 256,
else a u32 mod n); the scenario builders below follow the harnesses' read order exactly.

    python3 fuzz/gen_seeds.py
"""

import shutil
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
VECTORS = FUZZ.parent / "spec" / "vectors"
SEEDS = FUZZ / "seeds"

MAX_BODY = (1 << 22) + 16
FOCUS = [0x13, 0x20, 0x10, 0x12, 0x30, 0x02, 0x23, 0x31, 0x42]  # bodies.rs FOCUS
TYPES = [0x01, 0x02, 0x10, 0x11, 0x12, 0x13, 0x14, 0x20, 0x21, 0x22, 0x23, 0x30, 0x31, 0x40,
         0x41, 0x42]  # model.rs
FLAGS = {0x12: 7, 0x20: 3, 0x23: 1, 0x30: 1, 0x40: 1}


def load_vectors():
    out = []
    for path in sorted(VECTORS.glob("*.vec")):
        expect, geometry, data = None, None, bytearray()
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                c = line[1:].strip()
                if c.startswith("expect:"):
                    expect = c[len("expect:"):].strip()
                elif c.startswith("geometry:"):
                    size, shift = c[len("geometry:"):].split()
                    geometry = (int(size), int(shift))
                continue
            data.extend(bytes.fromhex(line))
        out.append((path.stem, expect, geometry, bytes(data)))
    return out


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def below(v, n):
    """Bytes that make Input::below(n) return v."""
    assert 0 <= v < n
    return u8(v) if n <= 256 else u32(v)


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# --- replica_machine -----------------------------------------------------------------------------

class ReplicaScript:
    """Builds replica_machine input; tracks the chunk count the harness will see."""

    def __init__(self, setup=0, committed=b"", max_body=b""):
        self.b = bytearray(u8(setup) + committed + max_body)
        self.n = None

    def open(self, chunks, shift_sel=0, extra=0, generation=1, name=b"vm", local=0):
        # op 1: shift below(5), big u8, chunks-1 below(64), u16 extra, generation u8, name len, name
        self.b += u8(1) + below(shift_sel, 5) + u8(0) + below(chunks - 1, 64) + u16(extra)
        self.b += u8(generation) + below(len(name) - 1, 16) + name
        # Opened: local_state selector, then its seed
        self.b += u8(local) + (u64(0x0123456789ABCDEF) if local != 3 else b"")
        self.n = chunks

    def chunk(self, index, zero=False, fetched=False, fill=7):
        mode = (1 if zero else 0) | (2 if fetched else 0)
        self.b += u8(2) + u8(mode) + below(index, self.n + 1)
        if not zero:
            self.b += u8(fill) + b"\x01\x02\x03\x04"

    def commit(self, sel=12):
        self.b += u8(5) + u8(sel)

    def handoff(self):
        self.b += u8(6) + u64(0) + u8(0)

    def fetch(self, first, count, urgent):
        self.b += u8(8) + u8(0) + below(first, self.n + 3) + u8(count) + u8(1 if urgent else 0)

    def raw(self, frame):
        self.b += u8(0) + u16(len(frame)) + frame

    def drain(self):
        self.b += u8(9)

    def fetch_part(self, index, offset, length, chunk_len=4096):
        # op 11: index selector (not 0xff), below(n + 1), range mode 0 (inside the chunk)
        self.b += u8(11) + u8(0) + below(index, self.n + 1) + u8(0)
        self.b += below(offset, chunk_len) + below(length - 1, chunk_len - offset)

    def lane_chunk(self, index, zero=False, fill=7):
        # op 10, lane frame kind 0: a CHUNK as chunk() builds it, here with FETCHED
        mode = (1 if zero else 0) | 2
        self.b += u8(10) + u8(0) + u8(mode) + below(index, self.n + 1)
        if not zero:
            self.b += u8(fill) + b"\x01\x02\x03\x04"

    # Post-copy (op 12: STALE / HANDOFF{POSTCOPY} / FETCHED copy; 13 local_write; 14 resume).

    def stale(self, first, count):
        # op 12, kind 0: STALE inside the region, count 1..=min(n - first, 16)
        self.b += u8(12) + u8(0) + below(first, self.n) + below(count - 1, min(self.n - first, 16))

    def handoff_postcopy(self):
        # op 12, kind 3: HANDOFF{committed, POSTCOPY}
        self.b += u8(12) + u8(3)

    def fetched_copy(self, index, zero=False, fill=0x5A):
        # op 12, kind 5: a FETCHED CHUNK, right hash, of the first missing chunk at or after index
        self.b += u8(12) + u8(5) + u8(1 if zero else 0) + below(index, self.n)
        if not zero:
            self.b += u8(fill) + u8(fill ^ 0xFF)

    def local_write(self, index):
        # op 13, mode 1: exactly chunk `index` (below(n + 1))
        self.b += u8(13) + u8(1) + below(index, self.n + 1)

    def resume_postcopy(self, missing_mask):
        # op 14: generation = committed (sel 0), a set of the OPEN's chunk count (sel 2), members
        # from a u64 mask (mode 2)
        self.b += u8(14) + u8(0) + u8(2) + u8(2) + u64(missing_mask)

    def lane_part(self, index, offset, length, chunk_len=4096, zero=False, fill=9):
        # op 10, lane frame kind 1: a PART of the first requested chunk from `index`, inside it
        mode = 1 if zero else 0
        self.b += u8(10) + u8(1) + u8(mode) + below(index, self.n)
        self.b += below(offset, chunk_len) + below(length - 1, chunk_len - offset)
        if not zero:
            self.b += u8(fill) + b"\x05\x06\x07\x08"


def replica_seeds(vectors):
    s = ReplicaScript()
    s.open(3)
    for i in range(3):
        s.chunk(i, zero=(i == 1))
    s.commit()
    s.chunk(2, fill=9)
    s.commit()
    s.handoff()
    write("replica_machine", "eager_two_generations_handoff", bytes(s.b))

    s = ReplicaScript(setup=1, committed=u8(5))
    s.open(5, local=2)
    s.fetch(1, 3, True)
    for i in (1, 2, 3):
        s.chunk(i, fetched=True)
    s.fetch(0, 5, False)
    for i in (0, 4):
        s.chunk(i)
    s.commit()
    s.handoff()
    write("replica_machine", "lazy_fetch_then_handoff", bytes(s.b))

    # FETCH_PARTS: a part and a lane copy shown before the region stream's copy, a part of a
    # chunk already present discarded, a ZERO part, then the rest of the region and a handoff.
    s = ReplicaScript()
    s.open(5, local=2)
    s.fetch_part(1, 1024, 16)
    s.lane_part(1, 1024, 16)
    s.lane_chunk(1)
    s.chunk(1)
    s.lane_part(1, 0, 8)
    s.fetch_part(2, 4000, 96)
    s.lane_part(2, 4000, 96, zero=True)
    s.fetch(0, 5, False)
    for i in (0, 2, 3, 4):
        s.chunk(i)
    s.commit()
    s.handoff()
    write("replica_machine", "lazy_fetch_part_lane", bytes(s.b))

    # Post-copy (§8.10), eager: two generations, the second committed as far as its round went
    # (chunk 2), STALE for the chunks the round did not reach, HANDOFF{POSTCOPY} -> PostCopy with
    # background FETCHes; a fetched copy written, a chunk written whole locally, the last copy
    # making BecameOwner, then a late copy of the chunk written locally, dropped.
    s = ReplicaScript()
    s.open(6, local=0)
    for i in range(6):
        s.chunk(i, zero=(i == 1))
    s.commit()
    s.chunk(2, fill=9)
    s.commit()
    s.stale(3, 2)
    s.stale(5, 1)
    s.handoff_postcopy()
    s.fetched_copy(3)
    s.local_write(4)
    s.fetched_copy(5, zero=True)
    s.fetched_copy(4)
    s.drain()
    write("replica_machine", "postcopy_eager_stale_handoff", bytes(s.b))

    # Post-copy, lazy: read-ahead and an urgent fetch before, STALE of a chunk it held, a handoff
    # with runs missing, an urgent FETCH in PostCopy (a partial writer waits), copies.
    s = ReplicaScript()
    s.open(8, local=2)
    s.fetch(0, 2, False)
    for i in (0, 1):
        s.chunk(i, fetched=True)
    for i in (2, 3, 4):
        s.chunk(i)
    s.commit()
    s.stale(2, 1)
    s.handoff_postcopy()
    s.fetch(6, 1, True)
    s.fetched_copy(6)
    s.local_write(7)
    s.fetched_copy(2)
    s.fetched_copy(5)
    s.fetched_copy(7)
    write("replica_machine", "postcopy_lazy_handoff_fetches", bytes(s.b))

    # Post-copy resumed on a new stream (the old owner's probe OPEN): resume_postcopy instead of
    # local_state, then the copies.
    s = ReplicaScript(setup=1, committed=u8(4))
    s.open(5, local=3)
    s.resume_postcopy(0b10110)
    s.fetched_copy(1)
    s.local_write(2)
    s.fetched_copy(0)
    s.fetched_copy(4)
    write("replica_machine", "postcopy_resume", bytes(s.b))

    # HANDOFF{POSTCOPY} with nothing missing: BecameOwner at once; a FETCHED copy then is refused.
    s = ReplicaScript()
    s.open(3, local=1)
    for i in range(3):
        s.chunk(i)
    s.commit()
    s.handoff_postcopy()
    s.fetched_copy(0)
    write("replica_machine", "postcopy_nothing_missing", bytes(s.b))

    s = ReplicaScript(setup=4 | (1 << 3))  # MOUNT replica, max_body = MIN_MAX_BODY
    s.open(40, local=0)
    s.chunk(39)
    s.commit(sel=0)  # wrong count
    write("replica_machine", "mount_summary_mismatch", bytes(s.b))

    # The worked example of §6 through raw golden frames: OPEN, three chunks, COMMIT.
    by = {name: data for name, _, _, data in vectors}
    s = ReplicaScript()
    s.raw(by["open_basic"])
    s.b += u8(1) + u64(0)  # Opened: Local::Empty
    s.n = 3
    for name in ("chunk_full", "chunk_zero", "chunk_last_one_byte", "commit_basic"):
        s.raw(by[name])
    s.drain()
    write("replica_machine", "worked_example_raw", bytes(s.b))

    # Each vector raw, after a generated OPEN of the same example region (8193 bytes, 4 KiB).
    for name, _, _, data in vectors:
        s = ReplicaScript()
        s.open(3, extra=0, local=1)
        s.raw(data)
        write("replica_machine", "vec_" + name, bytes(s.b))


# --- owner_machine -------------------------------------------------------------------------------

class OwnerScript:
    def __init__(self, n, extra=0, seed=5, zero_mask=0b10, known_mode=0, gen=(0, b"")):
        self.n = n
        self.b = bytearray(below(n - 1, 80) + u16(extra) + u8(seed) + u64(zero_mask))
        self.b += u8(known_mode) + u64(0xABCDEF) + u8(gen[0]) + gen[1]

    def state(self, empty=False, lazy=False, generation=0, count_ok=True):
        flags = (1 if empty else 0) | (0 if count_ok else 2) | (0x40 if lazy else 0)
        if not empty and count_ok:
            flags |= 4  # (flags >> 1) & 3 == 2: chunk_count = n
        self.b += u8(0) + u8(0) + u8(flags) + u8(generation)

    def hashes_all(self):
        # HASHES from `next`, n entries taken from the owner's known hashes (mode 0)
        self.b += u8(0) + u8(1) + u8(2) + below(self.n - 1, 24) + u8(0)

    def ack(self, sel=0):
        self.b += u8(0) + u8(2) + u8(sel)

    def fetch(self, first, count, urgent):
        self.b += u8(0) + u8(4) + u8(0) + below(first, self.n + 1) + below(count - 1, 8)
        self.b += u8(1 if urgent else 0)

    def handoff_ack(self):
        self.b += u8(0) + u8(5) + u8(1)

    def fetch_part(self, index, offset, length, chunk_len=4096):
        # frame selector 8, byte_range mode 0 (inside the chunk)
        self.b += u8(0) + u8(8) + u8(0) + below(index, self.n + 1)
        self.b += below(offset, chunk_len) + below(length - 1, chunk_len - offset)

    def raw(self, frame):
        self.b += u8(4) + u16(len(frame)) + frame

    def mark(self, first, count):
        self.b += u8(6) + u8(0) + below(first, self.n + 2) + below(count, self.n + 2)

    def write(self, chunk, byte):
        self.b += u8(11) + below(chunk, self.n) + u8(0) + u8(byte) + u32(10) + u16(100)

    def scan(self):
        self.b += u8(12)

    def poll_all(self):
        self.b += u8(13)

    def restart(self):
        self.b += u8(7)

    def begin_handoff(self):
        self.b += u8(8)

    def begin_postcopy(self):
        self.b += u8(14)

    def finish(self):
        # op 15, even byte: finish()
        self.b += u8(15) + u8(0)

    def accept_postcopy_resume(self):
        # op 15, odd byte: accept_postcopy_resume()
        self.b += u8(15) + u8(1)

    def poll(self, k):
        # op 9: 1 + below(32) poll_transmit calls
        self.b += u8(9) + below(k - 1, 32)

    def handed_over(self):
        # frame selector 6: ERROR HANDED_OVER
        self.b += u8(0) + u8(6) + u8(1)


def owner_seeds(vectors):
    s = OwnerScript(4)
    s.state(generation=0)
    s.hashes_all()
    s.write(1, 0x33)
    s.scan()
    s.poll_all()
    s.ack(sel=1)
    s.begin_handoff()
    s.poll_all()
    s.handoff_ack()
    write("owner_machine", "eager_round_then_handoff", bytes(s.b))

    s = OwnerScript(8, extra=100)
    s.state(empty=True, lazy=True, generation=3)
    s.fetch(6, 2, True)
    s.fetch(2, 1, False)
    s.poll_all()
    s.ack(sel=1)
    s.mark(0, 3)
    s.restart()
    s.state(generation=2)
    s.hashes_all()
    s.poll_all()
    s.ack(sel=1)
    write("owner_machine", "lazy_fetch_restart_behind", bytes(s.b))

    # FETCH_PART is an urgent FETCH of one chunk: it overtakes a background FETCH and the round.
    s = OwnerScript(8, extra=100)
    s.state(empty=True, lazy=True)
    s.fetch(2, 3, False)
    s.fetch_part(3, 2048, 2048)
    s.fetch_part(7, 100, 1, chunk_len=101)
    s.poll_all()
    s.fetch_part(3, 0, 1)  # already sent on the stream: nothing queued
    s.poll_all()
    s.ack(sel=1)
    write("owner_machine", "lazy_fetch_part", bytes(s.b))

    # Post-copy (§8.10): a synced stream, four chunks written; the round reaches two of them when
    # begin_postcopy cuts it: COMMIT of those two, ACK, STALE of the other two, HANDOFF{POSTCOPY},
    # HANDOFF_ACK -> Serving; the new owner FETCHes the stale chunks; finish().
    def synced_postcopy(n=8):
        s = OwnerScript(n)
        s.state(generation=0)
        s.hashes_all()
        s.poll_all()  # OPEN, COMMIT{1} (reconciled content)
        s.ack(sel=1)
        for c in (2, 3, 5, 6):
            s.write(c, 0x40 + c)
        s.scan()
        s.poll(2)  # chunks 2 and 3 of the round
        s.begin_postcopy()
        s.poll_all()  # the cut COMMIT{2}
        s.ack(sel=1)
        s.poll_all()  # STALE{5, 2}, HANDOFF{2, POSTCOPY}
        s.handoff_ack()
        return s

    s = synced_postcopy()
    s.fetch(5, 2, False)
    s.poll_all()
    s.finish()
    write("owner_machine", "postcopy_cut_round_serve_finish", bytes(s.b))

    # The stream breaks in Serving: the probe OPEN, answered HANDOFF_ACK, resumes Serving.
    s = synced_postcopy()
    s.fetch(5, 1, True)
    s.restart()
    s.poll_all()  # the probe OPEN
    s.handoff_ack()
    s.fetch(5, 2, False)
    s.fetch_part(6, 0, 100)
    s.poll_all()
    s.finish()
    write("owner_machine", "postcopy_probe_resumes_serving", bytes(s.b))

    # A post-copy handoff right after reconnecting to an empty replica: the commit owed is an
    # empty round, then STALE names the whole region.
    s = OwnerScript(8, extra=100)
    s.state(empty=True, generation=0)
    s.begin_postcopy()
    s.poll_all()  # OPEN, COMMIT{1, 0}
    s.ack(sel=1)
    s.poll_all()  # STALE{0, 8}, HANDOFF{1, POSTCOPY}
    s.handoff_ack()
    s.fetch(0, 8, False)
    s.poll_all()
    s.finish()
    write("owner_machine", "postcopy_after_reconnect_all_stale", bytes(s.b))

    # A restarted old owner (it lost its memory of the handoff) allows a post-copy resume: the
    # new owner answers its OPEN with HANDOFF_ACK and FETCHes; Serving, then finish().
    s = OwnerScript(6, gen=(1, u8(9)))
    s.accept_postcopy_resume()
    s.poll_all()  # OPEN
    s.handoff_ack()
    s.fetch(1, 3, False)
    s.fetch(4, 1, True)
    s.poll_all()
    s.finish()
    write("owner_machine", "postcopy_restarted_owner_resumes", bytes(s.b))

    # HANDOFF{POSTCOPY} lost: the probe is answered ERROR HANDED_OVER (done), or STATE (not taken:
    # owner again, a plain handoff this time).
    def postcopy_probed():
        s = OwnerScript(4)
        s.state(generation=0)
        s.hashes_all()
        s.poll_all()
        s.ack(sel=1)
        s.mark(1, 2)
        s.begin_postcopy()
        s.poll_all()  # STALE{1, 2}, HANDOFF
        s.restart()
        s.poll_all()
        return s

    s = postcopy_probed()
    s.handed_over()
    write("owner_machine", "postcopy_probe_handed_over", bytes(s.b))
    s = postcopy_probed()
    s.state(generation=1)
    s.hashes_all()
    s.begin_handoff()
    s.poll_all()
    s.ack(sel=1)
    s.poll_all()
    s.handoff_ack()
    write("owner_machine", "postcopy_probe_state_then_plain", bytes(s.b))

    s = OwnerScript(3, gen=(2, u64(1 << 40)))
    s.state(count_ok=False)
    write("owner_machine", "state_wrong_count", bytes(s.b))

    # Each replica-side vector raw, against the example region (3 chunks, 8193 bytes), both in
    # Opening and after an empty STATE.
    for name, _, _, data in vectors:
        if not name.startswith(("state", "hashes", "ack", "fetch", "handoff", "error", "stale")):
            continue
        s = OwnerScript(3, extra=0)
        s.raw(data)
        s.state(empty=True)
        s.poll_all()
        s.raw(data)
        write("owner_machine", "vec_" + name, bytes(s.b))


# --- converge ------------------------------------------------------------------------------------

def converge_seed(n, extra, seed, flags, ops):
    return below(n - 1, 24) + u16(extra) + u8(seed) + u8(flags) + u8(1) + b"".join(ops)


def cw(offset, length, byte):
    return u8(0) + u32(offset) + u16(length - 1) + u8(byte)


def cz(offset, length):
    return u8(4) + u32(offset) + u16(length - 1)


SCAN, PUMP = u8(5), lambda k: u8(7) + u8(k)
DISC = lambda stay: u8(11) + u8(1 if stay else 0)
FETCH = lambda c, k, urg: u8(10) + u8(c) + u8(k - 1) + u8(1 if urg else 0)
STEP = lambda who, k: u8(12) + u8((k << 2) | who)


def converge_seeds():
    write("converge", "eager_scan", converge_seed(
        10, 123, 7, 0, [cw(5000, 100, 1), SCAN, PUMP(20), cw(30000, 9000, 2), SCAN, STEP(0, 5),
                        DISC(False), cz(0, 4096), SCAN, PUMP(50)]))
    write("converge", "lazy_fetch_disconnect_handoff", converge_seed(
        16, 7, 3, 1 | 4, [PUMP(2), FETCH(12, 3, True), STEP(2, 3), STEP(0, 4), cw(100, 10, 9),
                          SCAN, DISC(True), PUMP(5), FETCH(1, 2, False), PUMP(40)]))
    write("converge", "precise_identical_handoff", converge_seed(
        4, 4095, 9, 2 | 4 | (1 << 3), [cw(4096, 1, 0x42), STEP(0, 8), DISC(False), PUMP(10)]))
    write("converge", "lost_commit", converge_seed(
        6, 1, 11, 4 | (3 << 3), [PUMP(30), cw(0, 10, 5), SCAN, STEP(0, 4), DISC(False),
                                 PUMP(30)]))


# --- codec targets -------------------------------------------------------------------------------

def codec_seeds(vectors):
    by = {name: data for name, _, _, data in vectors}
    for name, expect, geometry, data in vectors:
        for target in ("frame_decode", "vectors_differential", "frame_roundtrip"):
            write(target, name, data)
        header = (data[:8] + bytes(8))[:8]
        write("header_parse", name, header + u32(MAX_BODY))
        if len(data) >= 8:
            length = struct.unpack("<I", data[4:8])[0]
            write("header_parse", name + "_exact", header + u32(length))
            write("header_parse", name + "_below", header + u32(max(length - 1, 0)))
        if len(data) >= 8 and data[1] in TYPES:
            kind = data[1]
            sel = 2 * FOCUS.index(kind) if kind in FOCUS else 2 * TYPES.index(kind) + 1
            flags = struct.unpack("<H", data[2:4])[0]
            size, shift = geometry or (8193, 12)
            write("bodies", name, u8(sel) + u16(flags) + u8(shift) + u64(size) + data[8:])
    example = by["chunk_full"] + by["chunk_zero"] + by["chunk_last_one_byte"] + by["commit_basic"]
    for target in ("frame_decode", "vectors_differential"):
        write(target, "stream_worked_example", example)
        write(target, "stream_state_hashes", by["state_hashes"] + by["hashes_full"] + by["ack_basic"])
        write(target, "ok_then_garbage", by["ack_basic"] + b"\xd5\x22\x00")


def nbd_seeds():
    """Client byte streams for nbd_server (NBD proto.md): a session of every command, options,
    a WRITE that claims 32 MiB and sends nothing, ABORT, out-of-range and oversized requests."""
    ihaveopt, request = 0x49484156454F5054, 0x25609513

    def opt(o, data=b""):
        return struct.pack(">QII", ihaveopt, o, len(data)) + data

    def req(cmd, off, ln, flags=0):
        return struct.pack(">IHHQQI", request, flags, cmd, 1, off, ln)

    hello = struct.pack(">I", 3)  # FIXED_NEWSTYLE | NO_ZEROES
    infos = struct.pack(">I", 1) + b"x" + struct.pack(">HH", 1, 3)
    write("nbd_server", "session", hello + opt(1, b"x") + req(1, 0, 4096, 1) + bytes(range(256)) * 16
          + req(0, 0, 4096) + req(3, 0, 0) + req(6, 8192, 65536) + req(4, 0, 4096)
          + req(5, 0, 1 << 20) + req(0, (1 << 20) - 512, 512) + req(2, 0, 0))
    write("nbd_server", "options", hello + opt(3) + opt(6, infos) + opt(5) + opt(8) + opt(7, infos)
          + req(1, 0, 8192) + b"\xab" * 8192 + req(0, 4096, 600000) + req(2, 0, 0))
    write("nbd_server", "lying_write", hello + opt(1, b"") + req(1, 0, 32 << 20))
    write("nbd_server", "abort", hello + opt(2))
    write("nbd_server", "out_of_range", hello + opt(1, b"x") + req(0, 1 << 20, 4096)
          + req(1, (1 << 20) - 10, 100) + b"z" * 100 + req(9, 0, 0) + req(0, 0, (32 << 20) + 1))


def main():
    vectors = load_vectors()
    assert vectors, f"no vectors in {VECTORS}"
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    codec_seeds(vectors)
    replica_seeds(vectors)
    owner_seeds(vectors)
    converge_seeds()
    nbd_seeds()
    for d in sorted(SEEDS.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")


if __name__ == "__main__":
    main()
