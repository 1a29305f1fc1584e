#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need (fuse3, sqlite3,
# git, libacl for pjdfstest, the pjdfstest and fsx crates), builds once, runs everything.
# Needs root for the FUSE mounts and the POSIX suite (CI runs as root with /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
for pkg in fuse3 sqlite3 git python3 gcc pkg-config libacl1-dev bindfs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== build (once)"
cargo build --locked --all-targets

echo "== unit, property and end-to-end tests"
cargo test --locked --lib --bins --tests -- --test-threads=2

echo "== POSIX conformance through the mount (pjdfstest, fsx)"
./scripts/posix.sh
