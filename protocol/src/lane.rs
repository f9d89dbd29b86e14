//! Fetch lanes (spec/PROTOCOL.md §8.7): the owner's side of the rule that lets an urgent fetched
//! chunk travel on its own, higher-priority QUIC stream instead of waiting behind the region
//! stream's backlog.
//!
//! A lane copy is advisory: the owner still sends the chunk on the region stream, where it counts
//! for generations and handoff exactly as before; the replica shows the lane copy to readers only
//! until a copy from the region stream arrives. Readers never see a chunk go back in time because
//! the owner sends lane copies of a chunk only while no copy of it was sent on the region stream:
//! every lane copy is older than every region-stream copy, and each stream keeps its own order.
//! The same holds for parts (FETCH_PARTS): the bytes a reader waits for, sent on the lane ahead of
//! their chunk's lane copy under the same rule.

use crate::dirty::DirtySet;
use crate::geometry::Geometry;
use crate::hash::{chunk_hash, is_zero};
use crate::wire::{chunk_header, part_header, CHUNK_HEADER_LEN, HEADER_LEN, PART_HEADER_LEN};

/// The owner's record of which chunks went out on the region stream since it opened.
pub struct LaneGate {
    geom: Geometry,
    on_stream: DirtySet,
}

impl LaneGate {
    /// A gate for a region stream that just opened: no chunk sent on it yet.
    pub fn new(geom: Geometry) -> Self {
        LaneGate {
            geom,
            on_stream: DirtySet::new(geom.chunk_count()),
        }
    }

    /// Records that chunk `index` is being sent on the region stream. Call it before reading the
    /// chunk's bytes, atomically with respect to [`LaneGate::encode`].
    pub fn on_region_stream(&mut self, index: u64) {
        self.on_stream.insert(index);
    }

    /// Whether a lane copy of chunk `index` may be sent now.
    pub fn may_send(&self, index: u64) -> bool {
        index < self.geom.chunk_count() && !self.on_stream.contains(index)
    }

    /// The CHUNK frame (FETCHED) header for a lane copy of chunk `index` holding `data` (read
    /// just now), and whether `data` must follow it (false for a zero chunk). `None` when no lane
    /// copy may be sent (see [`LaneGate::may_send`]).
    pub fn encode(
        &self,
        index: u64,
        data: &[u8],
    ) -> Option<([u8; HEADER_LEN + CHUNK_HEADER_LEN], bool)> {
        if !self.may_send(index) || data.len() != self.geom.chunk_len(index) {
            return None;
        }
        if is_zero(data) {
            return Some((chunk_header(index, 0, true, true, 0), false));
        }
        Some((
            chunk_header(index, chunk_hash(data), false, true, data.len()),
            true,
        ))
    }

    /// The PART frame header for bytes `offset .. offset + data.len()` of chunk `index` (read
    /// just now), and whether `data` must follow it (false when the bytes are all zero). `None`
    /// when no lane copy of the chunk may be sent, the bytes are not inside the chunk, or the
    /// PART would be longer than a full chunk's CHUNK frame (more than `chunk_size − 8` bytes
    /// that are not all zero): its body could then exceed the negotiated `max_body`, which OPEN
    /// only guarantees for chunks (spec §3, §5.17); the lane copy serves such a reader as well.
    pub fn encode_part(
        &self,
        index: u64,
        offset: u32,
        data: &[u8],
    ) -> Option<([u8; HEADER_LEN + PART_HEADER_LEN], bool)> {
        if !self.may_send(index)
            || data.is_empty()
            || offset as u64 + data.len() as u64 > self.geom.chunk_len(index) as u64
        {
            return None;
        }
        let len = data.len() as u32;
        if is_zero(data) {
            return Some((part_header(index, offset, len, 0, true), false));
        }
        if (PART_HEADER_LEN + data.len()) as u64 > CHUNK_HEADER_LEN as u64 + self.geom.chunk_size()
        {
            return None;
        }
        Some((
            part_header(index, offset, len, chunk_hash(data), false),
            true,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{LaneEvent, Local, Replica, ReplicaEvent};
    use crate::wire::{ErrorCode, Frame, MAX_BODY};
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// The example region of the golden vectors: chunks of 4096, 4096 and 1 bytes.
    fn geom() -> Geometry {
        Geometry::new(8193, 12).unwrap()
    }

    fn decode(bytes: &[u8]) -> Frame<'_> {
        let (frame, used) = Frame::decode(bytes, MAX_BODY).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        frame
    }

    /// A lane copy as the owner writes it: the gate's header, then the bytes unless zero.
    fn lane_copy(gate: &LaneGate, index: u64, data: &[u8]) -> Vec<u8> {
        let (header, with_data) = gate.encode(index, data).expect("lane copy allowed");
        let mut out = header.to_vec();
        if with_data {
            out.extend_from_slice(data);
        }
        out
    }

    /// A region-stream CHUNK of `data`, ZERO when it is all zeros.
    fn region_copy(index: u64, data: &[u8], fetched: bool) -> Vec<u8> {
        let zero = is_zero(data);
        Frame::Chunk {
            index,
            hash: if zero { 0 } else { chunk_hash(data) },
            zero,
            fetched,
            payload: if zero { &[] } else { data },
        }
        .to_vec()
    }

    /// A replica in Receiving: lazy (with `fetch` asked urgently) or eager.
    fn replica(geom: Geometry, local: Local<'_>, fetch: &[u64]) -> Replica {
        let mut r = Replica::new(0);
        let open = Frame::Open {
            epoch: None,
            size: geom.size(),
            generation: 0,
            chunk_shift: geom.shift(),
            name: "r",
        };
        r.handle(&open).unwrap();
        r.local_state(local).unwrap();
        for &i in fetch {
            r.fetch(i, 1, true);
        }
        while r.poll_transmit().is_some() {}
        r
    }

    /// A part as the owner writes it: the gate's header, then the bytes unless zero.
    fn part(gate: &LaneGate, index: u64, offset: u32, data: &[u8]) -> Vec<u8> {
        let (header, with_data) = gate.encode_part(index, offset, data).expect("part allowed");
        let mut out = header.to_vec();
        if with_data {
            out.extend_from_slice(data);
        }
        out
    }

    fn code<T: std::fmt::Debug>(r: Result<T, crate::wire::WireError>) -> ErrorCode {
        r.expect_err("lane frame accepted").code
    }

    #[test]
    fn gate_encodes_fetched_chunks_until_the_region_stream_sends_them() {
        let mut gate = LaneGate::new(geom());
        let data: Vec<u8> = (0..4096u32).map(|i| i as u8 | 1).collect();
        let bytes = lane_copy(&gate, 0, &data);
        assert_eq!(
            decode(&bytes),
            Frame::Chunk {
                index: 0,
                hash: chunk_hash(&data),
                zero: false,
                fetched: true,
                payload: &data,
            }
        );
        assert_eq!(
            decode(&lane_copy(&gate, 2, &[0x2a])).kind(),
            crate::wire::kind::CHUNK
        );

        let (header, with_data) = gate.encode(1, &[0; 4096]).unwrap();
        assert!(!with_data);
        assert_eq!(
            decode(&header),
            Frame::Chunk {
                index: 1,
                hash: 0,
                zero: true,
                fetched: true,
                payload: &[],
            }
        );

        // Wrong length for the chunk, or past the region's end.
        assert!(gate.encode(0, &data[..4095]).is_none());
        assert!(gate.encode(2, &[1, 2]).is_none());
        assert!(!gate.may_send(3));
        assert!(gate.encode(3, &[1]).is_none());

        gate.on_region_stream(0);
        assert!(!gate.may_send(0));
        assert!(gate.encode(0, &data).is_none());
        assert!(gate.may_send(1), "other chunks keep their lane");
    }

    #[test]
    fn gate_encodes_parts_inside_chunks_until_the_region_stream_sends_them() {
        let mut gate = LaneGate::new(geom());
        let data = [5u8; 100];
        assert_eq!(
            decode(&part(&gate, 1, 3996, &data)),
            Frame::Part {
                index: 1,
                offset: 3996,
                len: 100,
                hash: chunk_hash(&data),
                zero: false,
                payload: &data,
            }
        );
        let (header, with_data) = gate.encode_part(2, 0, &[0]).unwrap();
        assert!(!with_data);
        assert_eq!(
            decode(&header),
            Frame::Part {
                index: 2,
                offset: 0,
                len: 1,
                hash: 0,
                zero: true,
                payload: &[],
            }
        );
        // Past the chunk's end (chunk 2 holds one byte), empty, or past the region's end.
        assert!(gate.encode_part(1, 3997, &data).is_none());
        assert!(gate.encode_part(2, 0, &[1, 2]).is_none());
        assert!(gate.encode_part(0, 0, &[]).is_none());
        assert!(gate.encode_part(3, 0, &[1]).is_none());
        gate.on_region_stream(1);
        assert!(gate.encode_part(1, 0, &data).is_none());
    }

    #[test]
    fn gate_sends_no_part_longer_than_a_full_chunk() {
        // With 4 MiB chunks, a part of the whole chunk would be 8 bytes over MAX_BODY; parts up
        // to chunk_size - 8 bytes, and ZERO parts of any length, fit every negotiated max_body.
        let g = Geometry::new(1 << 23, 22).unwrap();
        let gate = LaneGate::new(g);
        let size = g.chunk_size() as usize;
        let ones = vec![1u8; size];
        assert!(gate.encode_part(0, 0, &ones).is_none());
        assert!(gate.encode_part(0, 0, &ones[..size - 7]).is_none());
        let (header, with_data) = gate.encode_part(0, 8, &ones[..size - 8]).unwrap();
        assert!(with_data);
        let mut frame = header.to_vec();
        frame.extend_from_slice(&ones[..size - 8]);
        assert_eq!(frame.len() - HEADER_LEN, MAX_BODY as usize);
        assert!(matches!(decode(&frame), Frame::Part { offset: 8, .. }));
        let (header, with_data) = gate.encode_part(1, 0, &vec![0u8; size]).unwrap();
        assert!(!with_data);
        assert!(matches!(decode(&header), Frame::Part { zero: true, .. }));
    }

    #[test]
    fn parts_are_checked_like_lane_copies() {
        let mut r = replica(geom(), Local::Lazy, &[0]);
        let gate = LaneGate::new(geom());
        let data = [9u8; 512];
        let ok = part(&gate, 0, 512, &data);
        assert_eq!(
            r.handle_lane(&decode(&ok)),
            Ok(LaneEvent::Part {
                index: 0,
                offset: 512,
                len: 512,
                data: Some(&data[..]),
            })
        );
        let unrequested = part(&gate, 1, 0, &data);
        assert_eq!(
            code(r.handle_lane(&decode(&unrequested))),
            ErrorCode::ProtocolViolation
        );
        let mut bad_hash = ok.clone();
        *bad_hash.last_mut().unwrap() ^= 1;
        assert_eq!(
            code(r.handle_lane(&decode(&bad_hash))),
            ErrorCode::HashMismatch
        );
        // Bytes past the chunk's end: OUT_OF_RANGE (spec §5.14), as for a chunk past the region.
        let past = Frame::Part {
            index: 0,
            offset: 4000,
            len: 97,
            hash: 0,
            zero: true,
            payload: &[],
        };
        assert_eq!(code(r.handle_lane(&past)), ErrorCode::OutOfRange);
        // A part on the region stream is out of place.
        assert_eq!(code(r.handle(&decode(&ok))), ErrorCode::ProtocolViolation);
    }

    #[test]
    fn a_part_request_asks_for_its_chunk_urgently() {
        let mut r = replica(geom(), Local::Lazy, &[]);
        r.fetch_part(1, 4000, 96);
        let asked = r.poll_transmit().expect("FETCH_PART queued");
        assert_eq!(
            decode(&asked),
            Frame::FetchPart {
                index: 1,
                offset: 4000,
                len: 96
            }
        );
        // The chunk now counts as requested: its lane copies and parts are accepted.
        let gate = LaneGate::new(geom());
        assert!(r
            .handle_lane(&decode(&part(&gate, 1, 4000, &[3; 96])))
            .is_ok());
        // Bytes outside the chunk, or a chunk past the end, ask for nothing.
        r.fetch_part(2, 0, 2);
        r.fetch_part(3, 0, 1);
        r.fetch_part(0, 0, 0);
        assert!(r.poll_transmit().is_none());
    }

    #[test]
    fn lanes_serve_only_a_receiving_lazy_replica() {
        let g = geom();
        let copy = region_copy(2, &[0x2a], true);
        let chunk = decode(&copy);
        let pv = ErrorCode::ProtocolViolation;

        assert_eq!(code(Replica::new(0).handle_lane(&chunk)), pv);
        let mut awaiting_local = Replica::new(0);
        awaiting_local
            .handle(&Frame::Open {
                epoch: None,
                size: g.size(),
                generation: 0,
                chunk_shift: g.shift(),
                name: "r",
            })
            .unwrap();
        assert_eq!(code(awaiting_local.handle_lane(&chunk)), pv);
        assert_eq!(code(replica(g, Local::Empty, &[]).handle_lane(&chunk)), pv);
        assert_eq!(
            code(replica(g, Local::Hashes(&[0; 3]), &[]).handle_lane(&chunk)),
            pv
        );
    }

    #[test]
    fn lanes_carry_only_verified_fetched_chunks_that_were_asked_for() {
        let mut r = replica(geom(), Local::Lazy, &[2]);
        let pv = ErrorCode::ProtocolViolation;

        let round_chunk = region_copy(2, &[0x2a], false);
        assert_eq!(code(r.handle_lane(&decode(&round_chunk))), pv);
        assert_eq!(code(r.handle_lane(&Frame::Lane { stream: 4 })), pv);
        assert_eq!(code(r.handle_lane(&Frame::Ack { generation: 1 })), pv);
        let unrequested = region_copy(1, &[7; 4096], true);
        assert_eq!(code(r.handle_lane(&decode(&unrequested))), pv);

        let mut bad_hash = region_copy(2, &[0x2a], true);
        *bad_hash.last_mut().unwrap() ^= 1;
        assert_eq!(
            code(r.handle_lane(&decode(&bad_hash))),
            ErrorCode::HashMismatch
        );
        // Geometry checks as on the region stream (spec §5.14).
        let past_end = region_copy(3, &[0x2a], true);
        assert_eq!(
            code(r.handle_lane(&decode(&past_end))),
            ErrorCode::OutOfRange
        );
        let too_long = region_copy(2, &[0x2a; 2], true);
        assert_eq!(
            code(r.handle_lane(&decode(&too_long))),
            ErrorCode::Malformed
        );
    }

    #[test]
    fn lane_copies_show_until_the_region_stream_copy_and_never_count_as_present() {
        let g = Geometry::new(4097, 12).unwrap();
        let mut r = replica(g, Local::Lazy, &[0, 1]);
        let gate = LaneGate::new(g);
        let old = [1u8; 4096];

        let lane0 = lane_copy(&gate, 0, &old);
        assert_eq!(
            r.handle_lane(&decode(&lane0)),
            Ok(LaneEvent::Chunk {
                index: 0,
                data: Some(&old[..]),
            })
        );
        let lane1 = lane_copy(&gate, 1, &[0]);
        assert_eq!(
            r.handle_lane(&decode(&lane1)),
            Ok(LaneEvent::Chunk {
                index: 1,
                data: None,
            })
        );
        assert_eq!(r.missing(), 2, "a lane copy makes nothing present");
        assert_eq!(
            code(r.handle(&Frame::Handoff {
                generation: 0,
                postcopy: false,
            })),
            ErrorCode::ProtocolViolation
        );

        let new = [2u8; 4096];
        let region0 = region_copy(0, &new, true);
        assert_eq!(
            r.handle(&decode(&region0)),
            Ok(ReplicaEvent::Write {
                index: 0,
                data: Some(&new[..]),
            })
        );
        // The lane copy arriving late is older than what readers now see; so is a part.
        assert_eq!(r.handle_lane(&decode(&lane0)), Ok(LaneEvent::Discard));
        let part0 = part(&gate, 0, 0, &old[..8]);
        assert_eq!(r.handle_lane(&decode(&part0)), Ok(LaneEvent::Discard));
        assert_eq!(
            r.handle_lane(&decode(&lane1)),
            Ok(LaneEvent::Chunk {
                index: 1,
                data: None,
            })
        );

        let region1 = region_copy(1, &[0], true);
        r.handle(&decode(&region1)).unwrap();
        assert_eq!(
            r.handle(&Frame::Handoff {
                generation: 0,
                postcopy: false,
            }),
            Ok(ReplicaEvent::BecameOwner { generation: 0 })
        );
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        /// The owner's application writes the next version of the chunk.
        Write,
        /// The owner answers an urgent FETCH on the lane, if the gate allows.
        SendLane,
        /// The owner answers an urgent FETCH_PART on the lane with a part (bytes 4*half ..
        /// 4*half + 4 of the chunk), if the gate allows.
        SendPart(bool),
        /// The owner sends the chunk on the region stream.
        SendRegion,
        DeliverLane,
        DeliverRegion,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Write),
            Just(Op::SendLane),
            any::<bool>().prop_map(Op::SendPart),
            Just(Op::SendRegion),
            Just(Op::DeliverLane),
            Just(Op::DeliverRegion),
        ]
    }

    proptest! {
        /// One 8-byte chunk whose every byte holds its version number (version 0 is the zero
        /// chunk). Whatever the owner sends (lane copies, parts, region-stream copies) and however
        /// the two ordered streams interleave on delivery, every byte readers see moves through
        /// the versions in order, ending with the last one the region stream carried.
        #[test]
        fn readers_see_each_chunk_move_forward_only(
            ops in prop::collection::vec(op(), 0..48),
            delivery in prop::collection::vec(any::<bool>(), 0..48),
        ) {
            let g = Geometry::new(8, 12).unwrap();
            let mut gate = LaneGate::new(g);
            let mut r = replica(g, Local::Lazy, &[0]);
            let (mut version, mut last_region) = (0u8, 0u8);
            let mut lane: VecDeque<Vec<u8>> = VecDeque::new();
            let mut region: VecDeque<Vec<u8>> = VecDeque::new();
            // What readers see of each byte, and whether it ever went back.
            let mut shown = [0u8; 8];
            let mut backwards = Vec::new();

            let mut deliver = |from_lane: bool, lane: &mut VecDeque<Vec<u8>>, region: &mut VecDeque<Vec<u8>>| {
                let queue = if from_lane { lane } else { region };
                let Some(bytes) = queue.pop_front() else { return };
                let frame = decode(&bytes);
                let (range, data) = if from_lane {
                    match r.handle_lane(&frame).unwrap() {
                        LaneEvent::Chunk { data, .. } => (0..8, data),
                        LaneEvent::Part { offset, len, data, .. } => {
                            (offset as usize..(offset + len) as usize, data)
                        }
                        LaneEvent::Discard => return,
                    }
                } else {
                    match r.handle(&frame).unwrap() {
                        ReplicaEvent::Write { data, .. } => (0..8, data),
                        other => panic!("unexpected {other:?}"),
                    }
                };
                for (k, at) in range.enumerate() {
                    let v = data.map_or(0, |d| d[k]);
                    if v < shown[at] {
                        backwards.push((at, shown[at], v));
                    }
                    shown[at] = v;
                }
            };

            for op in ops.into_iter().chain([Op::SendRegion]) {
                let data = [version; 8];
                match op {
                    Op::Write => version += 1,
                    Op::SendLane if gate.may_send(0) => lane.push_back(lane_copy(&gate, 0, &data)),
                    Op::SendLane => prop_assert!(gate.encode(0, &data).is_none()),
                    Op::SendPart(half) => {
                        let offset = if half { 4 } else { 0 };
                        match gate.encode_part(0, offset, &data[..4]) {
                            Some(_) => lane.push_back(part(&gate, 0, offset, &data[..4])),
                            None => prop_assert!(!gate.may_send(0)),
                        }
                    }
                    Op::SendRegion => {
                        gate.on_region_stream(0);
                        region.push_back(region_copy(0, &data, version % 2 == 0));
                        last_region = version;
                    }
                    Op::DeliverLane => deliver(true, &mut lane, &mut region),
                    Op::DeliverRegion => deliver(false, &mut lane, &mut region),
                }
            }
            for from_lane in delivery {
                deliver(from_lane, &mut lane, &mut region);
            }
            while !lane.is_empty() || !region.is_empty() {
                deliver(!lane.is_empty(), &mut lane, &mut region);
            }

            prop_assert!(backwards.is_empty(), "bytes went back: {backwards:?}");
            prop_assert_eq!(shown, [last_region; 8]);
        }
    }
}
