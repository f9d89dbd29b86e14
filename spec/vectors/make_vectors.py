#!/usr/bin/env python3
"""Reference encoder for memsync golden frames (spec/PROTOCOL.md §4-§6).

Independent of the Rust code: it builds every frame with `struct` from the byte layouts in
PROTOCOL.md and writes one `<case>.vec` file per case into the directory holding this script,
deleting stale `.vec` files. Hash values are literals (XXH3-64, seed 0); the Rust tests check them
against a real XXH3 implementation.

Usage: python3 spec/vectors/make_vectors.py
"""

import os
import struct
import sys

MAGIC = 0xD5
HELLO, ERROR, OPEN, MOUNT, STATE, HASHES, LANE = 0x01, 0x02, 0x10, 0x11, 0x12, 0x13, 0x14
CHUNK, COMMIT, ACK, PART, FETCH, FETCH_PART = 0x20, 0x21, 0x22, 0x23, 0x30, 0x31
HANDOFF, HANDOFF_ACK, STALE = 0x40, 0x41, 0x42

STATE_EMPTY, STATE_LAZY, STATE_DURABLE, STATE_EPOCH = 1, 2, 4, 8
OPEN_EPOCH = 1
CHUNK_ZERO, CHUNK_FETCHED = 1, 2
FETCH_URGENT = 1
PART_ZERO = 1
HANDOFF_POSTCOPY = 1
FEATURE_FETCH_LANE = 1  # HELLO feature bit 0
FEATURE_FETCH_PARTS = 2  # HELLO feature bit 1
FEATURE_DURABLE = 4  # HELLO feature bit 2
FEATURE_EPOCH = 8  # HELLO feature bit 3
FEATURE_POSTCOPY = 16  # HELLO feature bit 4

MAX_BODY = (1 << 22) + 16  # 4194320
MIN_MAX_BODY = (1 << 16) + 16  # 65552
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1

# The example region used by the CHUNK/HASHES/FETCH/COMMIT/STALE vectors: 8193 bytes in 4 KiB chunks,
# so chunks 0 and 1 are 4096 bytes and chunk 2 (the last) is 1 byte.
GEOM = (8193, 12)
PAYLOAD_4096 = bytes((i * 7 + 3) & 0xFF for i in range(4096))
H_4096 = 0xD7428746842BE37E  # XXH3-64(PAYLOAD_4096)
H_2A = 0x79D03016B7AEED0D  # XXH3-64(b"\x2a")
H_ZERO_4096 = 0x93D76FE148C689BA  # XXH3-64(4096 zero bytes)
# Bytes 1024..1040 of chunk 0 (PAYLOAD_4096), the part of part_basic, and their XXH3-64.
PART_16 = PAYLOAD_4096[1024:1040]
H_PART_16 = 0xB8C859B0F030B585
# XXH3-64 over (0 ‖ H_4096)(1 ‖ 0)(2 ‖ H_2A), each index and hash a u64 LE: the summary of the
# generation formed by chunk_full, chunk_zero and chunk_last_one_byte, in that order.
SUMMARY_3 = 0x133A05CFA48551D8
SUMMARY_EMPTY = 0x2D06800538D394C2  # XXH3-64 of no bytes

NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
NAME_255 = "".join(NAME_CHARS[i % len(NAME_CHARS)] for i in range(255))
assert len(NAME_255) == 255 and NAME_255[0] != "."


def header(kind, flags, length):
    return struct.pack("<BBHI", MAGIC, kind, flags, length)


def frame(kind, body, flags=0):
    return header(kind, flags, len(body)) + body


def hello(major=1, minor=0, max_body=MAX_BODY, max_regions=1024, features=0):
    return struct.pack("<HHIIQ", major, minor, max_body, max_regions, features)


def error(code, reason):
    return struct.pack("<I", code) + reason


def open_(size, generation, shift, name, reserved=0, name_len=None, epoch=None):
    if name_len is None:
        name_len = len(name)
    body = struct.pack("<QQBBH", size, generation, shift, name_len, reserved) + name
    return body if epoch is None else body + struct.pack("<Q", epoch)


def state(generation, chunk_count, epoch=None):
    body = struct.pack("<QQ", generation, chunk_count)
    return body if epoch is None else body + struct.pack("<Q", epoch)


def hashes(first, hs):
    return struct.pack("<Q", first) + b"".join(struct.pack("<Q", h) for h in hs)


def chunk(index, hash_, payload=b""):
    return struct.pack("<QQ", index, hash_) + payload


def commit(generation, count, summary):
    return struct.pack("<QIQ", generation, count, summary)


def gen(generation):
    return struct.pack("<Q", generation)


def fetch(first, count):
    return struct.pack("<QI", first, count)


def stale(first, count):
    return struct.pack("<QI", first, count)


def lane(stream):
    return struct.pack("<Q", stream)


def part(index, offset, length, hash_, payload=b""):
    return struct.pack("<QIIQ", index, offset, length, hash_) + payload


def fetch_part(index, offset, length):
    return struct.pack("<QII", index, offset, length)


CASES = []


def case(name, desc, data, expect="ok", geometry=None):
    CASES.append((name, desc, data, expect, geometry))


# --- valid frames -------------------------------------------------------------------------------

case("hello_default", "HELLO as the reference peer sends it: version 1.0, max_body 4194320, "
     "1024 regions, features FETCH_LANE (bit 0), FETCH_PARTS (bit 1), DURABLE (bit 2), EPOCH "
     "(bit 3) and POSTCOPY (bit 4): 31.",
     frame(HELLO, hello(features=FEATURE_FETCH_LANE | FEATURE_FETCH_PARTS | FEATURE_DURABLE
                          | FEATURE_EPOCH | FEATURE_POSTCOPY)))
case("hello_min_limits", "HELLO with the smallest legal max_body (65552), one region and every "
     "feature bit set (unknown bits are ignored by negotiation, not by the decoder).",
     frame(HELLO, hello(max_body=MIN_MAX_BODY, max_regions=1, features=U64_MAX)))
case("hello_major_2", "HELLO of a future major version 2.7: decodes; Hello::negotiate then fails "
     "with VERSION_MISMATCH.", frame(HELLO, hello(major=2, minor=7)))

case("error_empty_reason", "ERROR PROTOCOL_VIOLATION (1) with a zero-length reason.",
     frame(ERROR, error(1, b"")))
case("error_reason", "ERROR HASH_MISMATCH (7) with an ASCII reason.",
     frame(ERROR, error(7, b"chunk 3 does not match its hash")))
case("error_forbidden", "ERROR FORBIDDEN (20): the receiver's policy refuses this peer the region.",
     frame(ERROR, error(20, b"region disk.img is owned by another peer")))
case("error_handed_over", "ERROR HANDED_OVER (21): the answer to an old owner's OPEN (a probe) "
     "once the receiver took the region over (section 8.6).",
     frame(ERROR, error(21, b"region disk.img was handed over to this peer")))
case("error_not_durable", "ERROR NOT_DURABLE (22): an owner that requires durable ACKs refuses "
     "a replica whose STATE does not promise them (section 8.4).",
     frame(ERROR, error(22, b"durable acknowledgements are required")))
case("error_fenced", "ERROR FENCED (23): the answer to an OPEN whose ownership epoch is older "
     "than the receiver's record of the region (section 8.8).",
     frame(ERROR, error(23, b"region disk.img is owned at a newer epoch: this peer is fenced")))
case("error_unknown_code", "ERROR with code 0xffffffff, unknown to version 1.0: decodes (the "
     "code is kept raw).", frame(ERROR, error(U32_MAX, b"x")))
case("error_reason_max", "ERROR with a reason of exactly 1024 bytes: 512 two-byte UTF-8 "
     "characters (U+00E9).", frame(ERROR, error(18, "\u00e9".encode() * 512)))

case("open_basic", "OPEN of the 8193-byte example region in 4 KiB chunks (3 chunks), "
     "generation 0, name \"vm-1.ram\".", frame(OPEN, open_(8193, 0, 12, b"vm-1.ram")))
case("open_name_255", "OPEN with the longest name (255 bytes), 1 GiB in 64 KiB chunks, "
     "generation 1.", frame(OPEN, open_(1 << 30, 1, 16, NAME_255.encode())))
case("open_max_geometry", "OPEN of the largest region: 2^46 bytes in 4 MiB chunks (2^24 chunks), "
     "generation 2^64-1.", frame(OPEN, open_(1 << 46, U64_MAX, 22, b"big")))
case("open_min_geometry", "OPEN of a 1-byte region (one partial 4 KiB chunk) named \"x\".",
     frame(OPEN, open_(1, 0, 12, b"x")))

case("open_epoch", "OPEN EPOCH of the example region at generation 7 by the owner of ownership "
     "epoch 2 (a handoff or promotion made it, section 8.8).",
     frame(OPEN, open_(8193, 7, 12, b"vm-1.ram", epoch=2), OPEN_EPOCH))

case("mount_basic", "MOUNT of region \"vm-1.ram\".", frame(MOUNT, b"vm-1.ram"))
case("mount_name_255", "MOUNT with the longest name (255 bytes).",
     frame(MOUNT, NAME_255.encode()))

case("state_hashes", "STATE of a replica at generation 5 holding 3 chunks; HASHES follow.",
     frame(STATE, state(5, 3)))
case("state_empty", "STATE EMPTY: a new replica, generation 0, no HASHES follow.",
     frame(STATE, state(0, 0), STATE_EMPTY))
case("state_empty_lazy", "STATE EMPTY|LAZY: a lazy replica that will FETCH what it reads.",
     frame(STATE, state(0, 0), STATE_EMPTY | STATE_LAZY))
case("state_lazy_not_empty", "STATE LAZY without EMPTY: decodes (replicas must not send it; "
     "owners treat it as a plain STATE, see PROTOCOL.md §5.6).",
     frame(STATE, state(0, 3), STATE_LAZY))
case("state_durable", "STATE DURABLE of a replica at generation 5 holding 3 chunks: it sends "
     "each ACK only once the generation is on its stable storage (PROTOCOL.md §8.4).",
     frame(STATE, state(5, 3), STATE_DURABLE))
case("state_empty_durable", "STATE EMPTY|DURABLE: a new replica that acknowledges only what is "
     "on its stable storage.", frame(STATE, state(0, 0), STATE_EMPTY | STATE_DURABLE))
case("state_epoch", "STATE EPOCH of a replica at generation 5 holding 3 chunks, at ownership "
     "epoch 2 (the OPEN's, echoed).", frame(STATE, state(5, 3, epoch=2), STATE_EPOCH))
case("state_max", "STATE at generation 2^64-1 announcing 2^24 chunks.",
     frame(STATE, state(U64_MAX, 1 << 24)))

case("hashes_one", "HASHES with one hash: the last chunk (index 2, 1 byte 0x2a) of the example "
     "region.", frame(HASHES, hashes(2, [H_2A])), geometry=GEOM)
case("hashes_full", "HASHES covering the whole example region: chunk 0 (PAYLOAD_4096), chunk 1 "
     "(zeros: the real XXH3 of 4096 zero bytes, not 0) and chunk 2 (0x2a).",
     frame(HASHES, hashes(0, [H_4096, H_ZERO_4096, H_2A])), geometry=GEOM)

case("chunk_full", "CHUNK 0 of the example region with a 4096-byte payload (byte i = 7*i+3 mod "
     "256) and its XXH3-64.", frame(CHUNK, chunk(0, H_4096, PAYLOAD_4096)), geometry=GEOM)
case("chunk_zero", "CHUNK 1 of the example region, all zeros: flag ZERO, hash 0, no payload.",
     frame(CHUNK, chunk(1, 0), CHUNK_ZERO), geometry=GEOM)
case("chunk_last_one_byte", "CHUNK 2, the 1-byte last chunk of the example region: payload 0x2a.",
     frame(CHUNK, chunk(2, H_2A, b"\x2a")), geometry=GEOM)
case("chunk_fetched", "CHUNK 2 with flag FETCHED: an answer to FETCH, outside any generation.",
     frame(CHUNK, chunk(2, H_2A, b"\x2a"), CHUNK_FETCHED), geometry=GEOM)
case("chunk_zero_fetched", "CHUNK 1 with flags ZERO|FETCHED.",
     frame(CHUNK, chunk(1, 0), CHUNK_ZERO | CHUNK_FETCHED), geometry=GEOM)
case("chunk_max_index", "Zero CHUNK with the largest index of the largest region "
     "(2^46 bytes, 4 MiB chunks): index 2^24-1.",
     frame(CHUNK, chunk((1 << 24) - 1, 0), CHUNK_ZERO), geometry=(1 << 46, 22))

case("commit_basic", "COMMIT of generation 1 closing chunk_full, chunk_zero, "
     "chunk_last_one_byte (in that order): count 3 and their summary.",
     frame(COMMIT, commit(1, 3, SUMMARY_3)))
case("commit_empty", "COMMIT of generation 2 with no CHUNK (every chunk of the round was "
     "overtaken by FETCH): count 0, summary XXH3-64 of no bytes.",
     frame(COMMIT, commit(2, 0, SUMMARY_EMPTY)))
case("commit_max", "COMMIT at generation 2^64-1 of 2^24 chunks.",
     frame(COMMIT, commit(U64_MAX, 1 << 24, 0x0123456789ABCDEF)))

case("ack_basic", "ACK of generation 1.", frame(ACK, gen(1)))
case("ack_max", "ACK of generation 2^64-1.", frame(ACK, gen(U64_MAX)))

case("fetch_background", "FETCH without URGENT of the whole example region (chunks 0..3).",
     frame(FETCH, fetch(0, 3)), geometry=GEOM)
case("fetch_urgent", "FETCH URGENT of the last chunk of the example region.",
     frame(FETCH, fetch(2, 1), FETCH_URGENT), geometry=GEOM)
case("fetch_max_count", "FETCH of 2^32-1 chunks from 0: decodes (a geometry check would refuse "
     "it in any region).", frame(FETCH, fetch(0, U32_MAX)))

case("handoff_basic", "HANDOFF at generation 7.", frame(HANDOFF, gen(7)))
case("handoff_max", "HANDOFF at generation 2^64-1.", frame(HANDOFF, gen(U64_MAX)))
case("handoff_postcopy", "HANDOFF POSTCOPY at generation 7: a post-copy handoff; the replica "
     "may accept it with chunks missing (section 8.10).", frame(HANDOFF, gen(7), HANDOFF_POSTCOPY))
case("handoff_ack_basic", "HANDOFF_ACK at generation 7.", frame(HANDOFF_ACK, gen(7)))

case("stale_basic", "STALE of chunks 1 and 2, the last two of the example region: the replica's "
     "copies of them are older than the owner's, ahead of a post-copy HANDOFF (section 5.19).",
     frame(STALE, stale(1, 2)), geometry=GEOM)

case("lane_basic", "LANE opening a fetch lane for the region stream with QUIC stream ID 4 (the "
     "client's second bidirectional stream).", frame(LANE, lane(4)))
case("lane_max", "LANE naming stream ID 2^64-1: decodes (the receiver of the lane checks the ID).",
     frame(LANE, lane(U64_MAX)))

case("part_basic", "PART of bytes 1024..1040 of chunk 0 of the example region (those bytes of "
     "chunk_full's payload) with their XXH3-64: what an owner may send on a fetch lane to answer "
     "fetch_part_basic.", frame(PART, part(0, 1024, 16, H_PART_16, PART_16)), geometry=GEOM)
case("part_last_chunk", "PART of the whole 1-byte last chunk of the example region (bytes 0..1 "
     "of chunk 2, payload 0x2a): the part ends exactly at the chunk's and the region's end.",
     frame(PART, part(2, 0, 1, H_2A, b"\x2a")), geometry=GEOM)
case("part_zero", "PART ZERO of bytes 2048..4096 of chunk 1 of the example region: hash 0, no "
     "payload.", frame(PART, part(1, 2048, 2048, 0), PART_ZERO), geometry=GEOM)
case("part_max_index", "PART ZERO of the last byte of the largest region (2^46 bytes, 4 MiB "
     "chunks): index 2^24-1, offset 2^22-1, len 1.",
     frame(PART, part((1 << 24) - 1, (1 << 22) - 1, 1, 0), PART_ZERO), geometry=(1 << 46, 22))

case("fetch_part_basic", "FETCH_PART of bytes 1024..1040 of chunk 0 of the example region: an "
     "urgent FETCH of chunk 0 whose reader waits for those bytes.",
     frame(FETCH_PART, fetch_part(0, 1024, 16)), geometry=GEOM)
case("fetch_part_whole_chunk", "FETCH_PART of all of chunk 0 (bytes 0..4096) of the example "
     "region.", frame(FETCH_PART, fetch_part(0, 0, 4096)), geometry=GEOM)
case("fetch_part_max", "FETCH_PART with index 2^64-1, offset and len 2^32-1: decodes (a geometry "
     "check would refuse it in any region).",
     frame(FETCH_PART, fetch_part(U64_MAX, U32_MAX, U32_MAX)))

# --- frame header -------------------------------------------------------------------------------

case("header_bad_magic", "ACK whose magic is 0xd4.",
     struct.pack("<BBHI", 0xD4, ACK, 0, 8) + gen(1), "error BAD_MAGIC")
case("header_all_zero", "Eight zero bytes.", bytes(8), "error BAD_MAGIC")
case("header_magic_before_type", "Bad magic and unknown type: magic is checked first.",
     struct.pack("<BBHI", 0x00, 0xFF, 0, 0), "error BAD_MAGIC")
case("header_unknown_type_00", "Frame type 0x00.", header(0x00, 0, 0), "error UNKNOWN_TYPE")
case("header_unknown_type_03", "Frame type 0x03.", header(0x03, 0, 0), "error UNKNOWN_TYPE")
case("header_unknown_type_ff", "Frame type 0xff with a body.", header(0xFF, 0, 1) + b"\x00",
     "error UNKNOWN_TYPE")
case("header_type_before_length", "Unknown type with a length above MAX_BODY: the type is "
     "checked first.", header(0x03, 0, U32_MAX), "error UNKNOWN_TYPE")
case("header_flags_before_length", "ACK with flag bit 0 and a length above MAX_BODY: flags are "
     "checked before the length.", header(ACK, 1, U32_MAX), "error MALFORMED")
case("header_too_large", "CHUNK header claiming MAX_BODY+1 (4194321) body bytes; refused from "
     "the header alone.", header(CHUNK, 0, MAX_BODY + 1), "error FRAME_TOO_LARGE")
case("header_too_large_u32", "ACK header claiming 2^32-1 body bytes.",
     header(ACK, 0, U32_MAX), "error FRAME_TOO_LARGE")
case("header_max_body", "CHUNK header claiming exactly MAX_BODY body bytes, none present: the "
     "length is accepted and the decoder waits for the body.", header(CHUNK, 0, MAX_BODY),
     "incomplete")
case("header_partial", "Seven bytes: not yet a whole header.", header(ACK, 0, 8)[:7],
     "incomplete")
case("ack_truncated", "ACK whose header promises 8 body bytes of which 4 are present.",
     frame(ACK, gen(1))[:12], "incomplete")

# --- flags ---------------------------------------------------------------------------------------

case("hello_flag", "HELLO with flag bit 0 (HELLO defines no flags).",
     frame(HELLO, hello(), 1), "error MALFORMED")
case("ack_flag_high", "ACK with flag bit 15.", frame(ACK, gen(1), 0x8000), "error MALFORMED")
case("state_undefined_flag", "STATE with flag bit 4 (only EMPTY=1, LAZY=2, DURABLE=4 and EPOCH=8 "
     "are defined).", frame(STATE, state(0, 0), 16 | STATE_EMPTY), "error MALFORMED")
case("open_undefined_flag", "OPEN with flag bit 1 (only EPOCH=1 is defined).",
     frame(OPEN, open_(8193, 0, 12, b"r"), 2), "error MALFORMED")
case("chunk_undefined_flag", "CHUNK with flag bit 2 (only ZERO=1 and FETCHED=2 are defined).",
     frame(CHUNK, chunk(2, H_2A, b"\x2a"), 4), "error MALFORMED")
case("fetch_undefined_flag", "FETCH with flag bit 1 (only URGENT=1 is defined).",
     frame(FETCH, fetch(0, 1), 2), "error MALFORMED")
case("lane_flag", "LANE with flag bit 0 (LANE defines no flags).", frame(LANE, lane(4), 1),
     "error MALFORMED")
case("part_undefined_flag", "PART with flag bit 1 (only ZERO=1 is defined; PART has no FETCHED).",
     frame(PART, part(2, 0, 1, H_2A, b"\x2a"), 2), "error MALFORMED")
case("fetch_part_flag", "FETCH_PART with flag bit 0 (FETCH_PART defines no flags; it is always "
     "urgent).", frame(FETCH_PART, fetch_part(0, 1024, 16), 1), "error MALFORMED")
case("handoff_undefined_flag", "HANDOFF with flag bit 1 (only POSTCOPY=1 is defined).",
     frame(HANDOFF, gen(7), 2), "error MALFORMED")
case("stale_undefined_flag", "STALE with flag bit 0 (STALE defines no flags).",
     frame(STALE, stale(1, 2), 1), "error MALFORMED")

# --- body lengths ---------------------------------------------------------------------------------

case("hello_short", "HELLO body of 19 bytes.", frame(HELLO, hello()[:19]), "error MALFORMED")
case("hello_trailing", "HELLO body with one trailing byte.", frame(HELLO, hello() + b"\x00"),
     "error MALFORMED")
case("ack_short", "ACK body of 7 bytes.", frame(ACK, gen(1)[:7]), "error MALFORMED")
case("ack_trailing", "ACK body with one trailing byte.", frame(ACK, gen(1) + b"\x00"),
     "error MALFORMED")
case("commit_short", "COMMIT body of 19 bytes.", frame(COMMIT, commit(1, 3, SUMMARY_3)[:19]),
     "error MALFORMED")
case("commit_trailing", "COMMIT body with one trailing byte.",
     frame(COMMIT, commit(1, 3, SUMMARY_3) + b"\x00"), "error MALFORMED")
case("handoff_short", "HANDOFF with an empty body.", frame(HANDOFF, b""), "error MALFORMED")
case("handoff_ack_trailing", "HANDOFF_ACK body with one trailing byte.",
     frame(HANDOFF_ACK, gen(7) + b"\x00"), "error MALFORMED")
case("state_short", "STATE body of 15 bytes.", frame(STATE, state(5, 3)[:15]),
     "error MALFORMED")
case("fetch_trailing", "FETCH body with one trailing byte.",
     frame(FETCH, fetch(0, 1) + b"\x00"), "error MALFORMED")
case("lane_short", "LANE body of 7 bytes.", frame(LANE, lane(4)[:7]), "error MALFORMED")
case("lane_trailing", "LANE body with one trailing byte.", frame(LANE, lane(4) + b"\x00"),
     "error MALFORMED")

# --- ERROR ------------------------------------------------------------------------------------------

case("error_short", "ERROR body of 3 bytes (no whole code).", frame(ERROR, b"\x01\x00\x00"),
     "error MALFORMED")
case("error_invalid_utf8", "ERROR whose reason is not UTF-8 (0xc3 0x28).",
     frame(ERROR, error(2, b"\xc3\x28")), "error MALFORMED")
case("error_reason_too_long", "ERROR with a 1025-byte reason.",
     frame(ERROR, error(2, b"a" * 1025)), "error MALFORMED")

# --- OPEN / MOUNT ---------------------------------------------------------------------------------

case("open_bad_name_dotdot", "OPEN named \"../x\".", frame(OPEN, open_(8193, 0, 12, b"../x")),
     "error BAD_NAME")
case("open_name_empty", "OPEN with a zero-length name.", frame(OPEN, open_(8193, 0, 12, b"")),
     "error BAD_NAME")
case("open_name_hidden", "OPEN named \".hidden\" (starts with '.').",
     frame(OPEN, open_(8193, 0, 12, b".hidden")), "error BAD_NAME")
case("open_name_space", "OPEN named \"a b\".", frame(OPEN, open_(8193, 0, 12, b"a b")),
     "error BAD_NAME")
case("open_name_non_ascii", "OPEN named \"\u00e9\" (valid UTF-8, outside the name alphabet).",
     frame(OPEN, open_(8193, 0, 12, "\u00e9".encode())), "error BAD_NAME")
case("open_name_not_utf8", "OPEN whose name bytes are not UTF-8 (0xff): MALFORMED, not BAD_NAME.",
     frame(OPEN, open_(8193, 0, 12, b"\xff")), "error MALFORMED")
case("open_shift_11", "OPEN with chunk shift 11 (2 KiB chunks).",
     frame(OPEN, open_(8193, 0, 11, b"r")), "error BAD_GEOMETRY")
case("open_shift_23", "OPEN with chunk shift 23 (8 MiB chunks).",
     frame(OPEN, open_(1 << 23, 0, 23, b"r")), "error BAD_GEOMETRY")
case("open_size_zero", "OPEN of a 0-byte region.", frame(OPEN, open_(0, 0, 12, b"r")),
     "error BAD_GEOMETRY")
case("open_size_too_big", "OPEN of 2^46+1 bytes.", frame(OPEN, open_((1 << 46) + 1, 0, 22, b"r")),
     "error BAD_GEOMETRY")
case("open_too_many_chunks", "OPEN of 2^46 bytes in 2 MiB chunks: 2^25 chunks.",
     frame(OPEN, open_(1 << 46, 0, 21, b"r")), "error BAD_GEOMETRY")
case("open_name_before_geometry", "OPEN with both a bad name and a bad shift: the name is "
     "checked first.", frame(OPEN, open_(8193, 0, 11, b"../x")), "error BAD_NAME")
case("open_reserved_nonzero", "OPEN with reserved = 1.",
     frame(OPEN, open_(8193, 0, 12, b"r", reserved=1)), "error MALFORMED")
case("open_name_len_past_body", "OPEN whose name_len (5) exceeds the 4 name bytes present.",
     frame(OPEN, open_(8193, 0, 12, b"abcd", name_len=5)), "error MALFORMED")
case("open_trailing", "OPEN with a byte after the name.",
     frame(OPEN, open_(8193, 0, 12, b"abcd", name_len=3)), "error MALFORMED")
case("open_epoch_missing", "OPEN with the EPOCH flag and no epoch after the name.",
     frame(OPEN, open_(8193, 0, 12, b"r"), OPEN_EPOCH), "error MALFORMED")
case("open_epoch_zero", "OPEN EPOCH naming epoch 0 (epochs start at 1).",
     frame(OPEN, open_(8193, 0, 12, b"r", epoch=0), OPEN_EPOCH), "error MALFORMED")
case("open_epoch_unflagged", "OPEN with an epoch after the name but no EPOCH flag: 8 trailing "
     "bytes.", frame(OPEN, open_(8193, 0, 12, b"r", epoch=2)), "error MALFORMED")
case("state_epoch_zero", "STATE EPOCH naming epoch 0.",
     frame(STATE, state(5, 3, epoch=0), STATE_EPOCH), "error MALFORMED")
case("state_epoch_short", "STATE EPOCH with 4 of the epoch's 8 bytes.",
     frame(STATE, state(5, 3, epoch=2)[:20], STATE_EPOCH), "error MALFORMED")
case("open_short", "OPEN body of 19 bytes (no reserved field).",
     frame(OPEN, open_(8193, 0, 12, b"")[:19]), "error MALFORMED")

case("mount_empty", "MOUNT with an empty name.", frame(MOUNT, b""), "error BAD_NAME")
case("mount_slash", "MOUNT named \"a/b\".", frame(MOUNT, b"a/b"), "error BAD_NAME")
case("mount_dotdot", "MOUNT named \"..\".", frame(MOUNT, b".."), "error BAD_NAME")
case("mount_name_256", "MOUNT with a 256-byte name.", frame(MOUNT, b"a" * 256), "error BAD_NAME")
case("mount_not_utf8", "MOUNT whose name is not UTF-8.", frame(MOUNT, b"a\x80"),
     "error MALFORMED")

# --- STATE / HASHES -------------------------------------------------------------------------------

case("state_empty_with_count", "STATE EMPTY announcing 3 chunks.",
     frame(STATE, state(0, 3), STATE_EMPTY), "error MALFORMED")
case("hashes_partial_entry", "HASHES whose list is 12 bytes (not a multiple of 8).",
     frame(HASHES, hashes(0, [H_4096]) + b"\x00\x00\x00\x00"), "error MALFORMED")
case("hashes_empty_list", "HASHES with no hash.", frame(HASHES, hashes(0, [])), "error MALFORMED")
case("hashes_short", "HASHES body of 7 bytes.", frame(HASHES, b"\x00" * 7), "error MALFORMED")
case("hashes_past_end", "HASHES of chunks 2..4 in the 3-chunk example region.",
     frame(HASHES, hashes(2, [H_2A, H_2A])), "error OUT_OF_RANGE", GEOM)
case("hashes_first_past_end", "HASHES starting at chunk 3 of the 3-chunk example region.",
     frame(HASHES, hashes(3, [H_2A])), "error OUT_OF_RANGE", GEOM)
case("hashes_overflow", "HASHES starting at index 2^64-1 (first + count overflows u64).",
     frame(HASHES, hashes(U64_MAX, [H_2A])), "error OUT_OF_RANGE", GEOM)

# --- CHUNK ------------------------------------------------------------------------------------------

case("chunk_index_past_end", "CHUNK 3 of the 3-chunk example region.",
     frame(CHUNK, chunk(3, H_2A, b"\x2a")), "error OUT_OF_RANGE", GEOM)
case("chunk_zero_index_past_end", "Zero CHUNK at index 2^64-1 of the example region.",
     frame(CHUNK, chunk(U64_MAX, 0), CHUNK_ZERO), "error OUT_OF_RANGE", GEOM)
case("chunk_payload_too_long", "CHUNK 2 (1-byte last chunk) with a 2-byte payload.",
     frame(CHUNK, chunk(2, 0x1111, b"\x2a\x2a")), "error MALFORMED", GEOM)
case("chunk_payload_short", "CHUNK 0 (4096 bytes) with a 1-byte payload.",
     frame(CHUNK, chunk(0, H_2A, b"\x2a")), "error MALFORMED", GEOM)
case("chunk_zero_with_payload", "ZERO CHUNK carrying a 1-byte payload.",
     frame(CHUNK, chunk(2, 0, b"\x00"), CHUNK_ZERO), "error MALFORMED")
case("chunk_zero_with_hash", "ZERO CHUNK with a nonzero hash.",
     frame(CHUNK, chunk(1, H_ZERO_4096), CHUNK_ZERO), "error MALFORMED")
case("chunk_no_payload", "CHUNK without ZERO and without payload.",
     frame(CHUNK, chunk(0, H_4096)), "error MALFORMED")
case("chunk_short", "CHUNK body of 15 bytes.", frame(CHUNK, chunk(1, 0)[:15], CHUNK_ZERO),
     "error MALFORMED")

# --- FETCH ------------------------------------------------------------------------------------------

case("fetch_count_zero", "FETCH of zero chunks.", frame(FETCH, fetch(0, 0)), "error MALFORMED")
case("fetch_past_end", "FETCH of chunks 2..4 in the 3-chunk example region.",
     frame(FETCH, fetch(2, 2)), "error OUT_OF_RANGE", GEOM)
case("fetch_overflow", "FETCH from index 2^64-1 (first + count overflows u64).",
     frame(FETCH, fetch(U64_MAX, 1), FETCH_URGENT), "error OUT_OF_RANGE", GEOM)

# --- PART -------------------------------------------------------------------------------------------

case("part_short", "PART body of 23 bytes (no whole hash field).",
     frame(PART, part(1, 0, 1, 0)[:23], PART_ZERO), "error MALFORMED")
case("part_len_zero", "PART of zero bytes (len 0, no payload, the hash of no bytes).",
     frame(PART, part(0, 0, 0, SUMMARY_EMPTY)), "error MALFORMED")
case("part_zero_len_zero", "PART ZERO of zero bytes: len 0 is refused before the ZERO rules.",
     frame(PART, part(1, 0, 0, 0), PART_ZERO), "error MALFORMED")
case("part_zero_with_payload", "PART ZERO of 1 byte carrying a 1-byte payload.",
     frame(PART, part(1, 0, 1, 0, b"\x00"), PART_ZERO), "error MALFORMED")
case("part_zero_with_hash", "PART ZERO with a nonzero hash.",
     frame(PART, part(1, 0, 1, H_2A), PART_ZERO), "error MALFORMED")
case("part_no_payload", "PART without ZERO and without payload (len 16).",
     frame(PART, part(0, 1024, 16, H_PART_16)), "error MALFORMED")
case("part_payload_short", "PART of 16 bytes with a 15-byte payload.",
     frame(PART, part(0, 1024, 16, H_PART_16, PART_16[:15])), "error MALFORMED", GEOM)
case("part_payload_too_long", "PART of 1 byte with a 2-byte payload.",
     frame(PART, part(2, 0, 1, H_2A, b"\x2a\x2a")), "error MALFORMED", GEOM)
case("part_past_chunk_end", "PART of bytes 4090..4106 of chunk 0 (4096 bytes): decodes, then the "
     "geometry check refuses the range.",
     frame(PART, part(0, 4090, 16, H_PART_16, PART_16)), "error OUT_OF_RANGE", GEOM)
case("part_zero_past_chunk_end", "PART ZERO of bytes 1..2 of chunk 2, the 1-byte last chunk.",
     frame(PART, part(2, 1, 1, 0), PART_ZERO), "error OUT_OF_RANGE", GEOM)
case("part_offset_overflow", "PART ZERO with offset and len 2^32-1: offset + len overflows u32, "
     "not the u64 the check uses.", frame(PART, part(0, U32_MAX, U32_MAX, 0), PART_ZERO),
     "error OUT_OF_RANGE", GEOM)
case("part_index_past_end", "PART of chunk 3 of the 3-chunk example region.",
     frame(PART, part(3, 0, 1, H_2A, b"\x2a")), "error OUT_OF_RANGE", GEOM)

# --- FETCH_PART -------------------------------------------------------------------------------------

case("fetch_part_len_zero", "FETCH_PART of zero bytes.", frame(FETCH_PART, fetch_part(0, 0, 0)),
     "error MALFORMED")
case("fetch_part_short", "FETCH_PART body of 15 bytes.",
     frame(FETCH_PART, fetch_part(0, 1024, 16)[:15]), "error MALFORMED")
case("fetch_part_trailing", "FETCH_PART body with one trailing byte.",
     frame(FETCH_PART, fetch_part(0, 1024, 16) + b"\x00"), "error MALFORMED")
case("fetch_part_past_chunk_end", "FETCH_PART of bytes 0..2 of chunk 2, the 1-byte last chunk.",
     frame(FETCH_PART, fetch_part(2, 0, 2)), "error OUT_OF_RANGE", GEOM)
case("fetch_part_index_past_end", "FETCH_PART of chunk 3 of the 3-chunk example region.",
     frame(FETCH_PART, fetch_part(3, 0, 1)), "error OUT_OF_RANGE", GEOM)
case("fetch_part_overflow", "FETCH_PART of chunk 0 with offset and len 2^32-1 (offset + len "
     "overflows u32).", frame(FETCH_PART, fetch_part(0, U32_MAX, U32_MAX)), "error OUT_OF_RANGE",
     GEOM)

# --- STALE ------------------------------------------------------------------------------------------

case("stale_count_zero", "STALE of zero chunks.", frame(STALE, stale(0, 0)), "error MALFORMED")
case("stale_short", "STALE body of 11 bytes.", frame(STALE, stale(1, 2)[:11]), "error MALFORMED")
case("stale_trailing", "STALE body with one trailing byte.",
     frame(STALE, stale(1, 2) + b"\x00"), "error MALFORMED")
case("stale_past_end", "STALE of chunks 2..4 in the 3-chunk example region.",
     frame(STALE, stale(2, 2)), "error OUT_OF_RANGE", GEOM)
case("stale_overflow", "STALE from index 2^64-1 (first + count overflows u64).",
     frame(STALE, stale(U64_MAX, 1)), "error OUT_OF_RANGE", GEOM)


def render(name, desc, data, expect, geometry):
    lines = []
    words, line = desc.split(), "#"
    for w in words:  # wrap the description at ~100 columns
        if len(line) + 1 + len(w) > 100:
            lines.append(line)
            line = "#"
        line += " " + w
    lines.append(line)
    lines.append(f"# expect: {expect}")
    if geometry is not None:
        lines.append(f"# geometry: {geometry[0]} {geometry[1]}")
    for i in range(0, len(data), 16):
        lines.append(" ".join(f"{b:02x}" for b in data[i:i + 16]))
    return "\n".join(lines) + "\n"


def main():
    out = os.path.dirname(os.path.abspath(__file__))
    names = [c[0] for c in CASES]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        sys.exit(f"duplicate case names: {sorted(dupes)}")
    for c in CASES:
        assert c[3] in ("ok", "incomplete") or c[3].startswith("error "), c
        if c[3] == "ok":  # a valid frame's header length is its body length
            assert struct.unpack_from("<I", c[2], 4)[0] == len(c[2]) - 8, c[0]
    for f in os.listdir(out):
        if f.endswith(".vec") and f[:-4] not in names:
            os.remove(os.path.join(out, f))
    for c in CASES:
        with open(os.path.join(out, c[0] + ".vec"), "w", encoding="utf-8") as fh:
            fh.write(render(*c))
    ok = sum(1 for c in CASES if c[3] == "ok")
    print(f"wrote {len(CASES)} vectors ({ok} valid, {len(CASES) - ok} invalid) to {out}")


if __name__ == "__main__":
    main()
