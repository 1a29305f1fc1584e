#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need (fuse3, sqlite3,
# git, libacl for pjdfstest, the pjdfstest and fsx crates, the s3s-fs S3 server, moto in a venv
# and Node 24 + openclaw from npm under target/), builds once, runs everything. Tools are cached,
# so reruns skip the installs.
# Needs root for the FUSE mounts and the POSIX suite (CI runs as root with /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
for pkg in fuse3 sqlite3 git python3 python3-venv gcc pkg-config libacl1-dev bindfs fio; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# S3-compatible servers for the replication tests.
if ! command -v s3s-fs >/dev/null; then
  echo "== installing s3s-fs (once, into ~/.cargo/bin)"
  cargo install --locked s3s-fs --version 0.14.1 --features binary
fi
venv=target/test-tools/venv
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "== installing moto[server] (once, into $venv)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]'
fi
export PATH="$PWD/$venv/bin:$PATH"

./scripts/openclaw-tools.sh

# FUSE over io_uring (Linux 6.14+) is the daemon's request path wherever the kernel offers it;
# the fuse module keeps it off until asked (scripts/install.sh turns it on for good).
uring=/sys/module/fuse/parameters/enable_uring
[ -e /sys/module/fuse ] || $SUDO modprobe fuse 2>/dev/null || true
if [ -e "$uring" ] && [ "$(cat "$uring")" != Y ]; then
  echo "== turning on FUSE over io_uring ($uring)"
  echo Y | $SUDO tee "$uring" >/dev/null
fi

echo "== build (once)"
cargo build --locked --all-targets

echo "== unit, property and end-to-end tests"
cargo test --locked --lib --bins --tests -- --test-threads=2

echo "== POSIX conformance through the mount (pjdfstest, fsx)"
./scripts/posix.sh
