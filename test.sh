#!/usr/bin/env bash
# Installs what the tests need and runs every test of the workspace: the README's test command,
# and what .ci/run calls. The tests drive real NBD clients (qemu-io and qemu-img from qemu-utils;
# nbdinfo, nbdcopy and nbdfuse from libnbd-bin) and FUSE (fuse3); missing ones are installed with
# apt-get (as root, or through sudo). Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v nbdinfo >/dev/null && command -v nbdcopy >/dev/null && command -v nbdfuse >/dev/null \
  || need+=(libnbd-bin)
command -v fusermount3 >/dev/null || need+=(fuse3)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi

# Every test binary runs even when an earlier one fails, so one failure hides no other.
cargo test --workspace --no-fail-fast "$@"
