#!/usr/bin/env bash
# Installs what the tests need and runs every test of the workspace: the README's test command,
# and what .ci/run calls. The tests drive real NBD clients (qemu-io and qemu-img from qemu-utils;
# nbdinfo, nbdcopy and nbdfuse from libnbd-bin), FUSE (fuse3), a real VM (qemu-system-x86 with
# Debian's kernel and busybox as the guest) and a real S3 cluster (Garage); missing ones are
# installed with apt-get (as root, or through sudo) or cargo. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
updated=
apt_install() {
  echo "test.sh: installing $*" >&2
  [ -n "$updated" ] || { "${sudo[@]}" apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

# First, since on Debian 12 it replaces a backported qemu-utils with its own (7.2, which the tests
# work with; reinstalled below).
command -v qemu-system-x86_64 >/dev/null || apt_install qemu-system-x86
need=()
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v nbdinfo >/dev/null && command -v nbdcopy >/dev/null && command -v nbdfuse >/dev/null \
  || need+=(libnbd-bin)
command -v fusermount3 >/dev/null || need+=(fuse3)
((${#need[@]} == 0)) || apt_install "${need[@]}"

# The guest of the VM test (peer/tests/vm.rs): Debian's kernel and a static busybox, unpacked from
# their packages (not installed) into target/vm.
export MEMSYNC_VM_DIR="${MEMSYNC_VM_DIR:-$PWD/${CARGO_TARGET_DIR:-target}/vm}"
if [ ! -s "$MEMSYNC_VM_DIR/vmlinuz" ] || [ ! -s "$MEMSYNC_VM_DIR/busybox" ]; then
  echo "test.sh: fetching the VM test's guest into $MEMSYNC_VM_DIR" >&2
  [ -n "$updated" ] || { "${sudo[@]}" apt-get update -qq; updated=1; }
  kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  work=$(mktemp -d)
  (cd "$work" && apt-get download -q "$kernel" busybox-static)
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
  mkdir -p "$MEMSYNC_VM_DIR"
  cp "$work"/root/boot/vmlinuz-* "$MEMSYNC_VM_DIR/vmlinuz"
  cp "$work/root/bin/busybox" "$MEMSYNC_VM_DIR/busybox"
  rm -rf "$work"
fi

# The object-store tests' S3 cluster (peer/tests/store.rs): Garage, which no package registry
# here ships as a binary, built once with cargo into cargo's bin directory (about 15 minutes on
# two cores; SQLite only, no LMDB, metrics or K2V) and reused while its version matches.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
garage_version=2.5.0
if ! garage --version 2>/dev/null | grep -qF "$garage_version"; then
  echo "test.sh: building garage $garage_version (once, about 15 minutes)" >&2
  cargo install garage --version "$garage_version" --locked --quiet \
    --no-default-features --features bundled-libs,sqlite
fi

# Every test binary runs even when an earlier one fails, so one failure hides no other.
cargo test --workspace --no-fail-fast "$@"
