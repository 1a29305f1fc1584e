#!/usr/bin/env bash
# POSIX conformance through a clawfs mount:
# - pjdfstest on the plain backing directory and through the mount: the mount may fail no test
#   that the plain directory passes;
# - fsx, 100,000 random operations on one file through the mount: all must check out;
# - both again under `tmp/`, which is not versioned: as root, the kernel serves those files
#   without the daemon (FUSE passthrough), and must still pass.
# Installs pjdfstest 0.2.2 and fsx 0.3.2 into ~/.cargo/bin when missing (cached across runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "posix.sh needs root (pjdfstest switches users)"; exit 1; }

command -v pjdfstest >/dev/null || cargo install pjdfstest --version 0.2.2 --locked
command -v fsx >/dev/null || cargo install fsx --version 0.3.2 --locked
id tests >/dev/null 2>&1 || useradd -M -U -s /usr/sbin/nologin tests

bin="$PWD/target/debug/clawfs"
[ -x "$bin" ] || cargo build --locked
work=$(mktemp -d /tmp/clawfs-posix.XXXXXX)
# pjdfstest runs some cases as unprivileged users: they must be able to reach the test dirs.
chmod 0755 "$work"
export HOME="$work/home"
mkdir -p "$HOME" "$work/plain" "$work/mnt"
cleanup() {
  cd /
  "$bin" unmount "$work/mnt" >/dev/null 2>&1 || fusermount3 -u -z "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.05
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML

failed_tests() { grep -E '[[:space:]]FAILED$' "$1" | awk '{print $1}' | sort -u; }

echo "-- pjdfstest on the plain directory"
(cd "$work/plain" && pjdfstest -c "$work/pjdfstest.toml" -p "$work/plain" > "$work/plain.log" 2>&1) || true
grep '^Summary' "$work/plain.log"

echo "-- pjdfstest through the clawfs mount"
"$bin" mount "$work/mnt"
# The rings are set up just after the mount is ready; where the kernel offers io_uring, that is
# the path these suites test (the overlay tests cover /dev/fuse too).
requests() { "$bin" status "$work/mnt" | grep '^requests'; }
for _ in $(seq 50); do requests | grep -q starting || break; sleep 0.1; done
requests
if [ "$(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null)" = Y ]; then
  requests | grep -q '^requests    io_uring' || { echo "io_uring is offered but not used"; exit 1; }
fi
(cd "$work/mnt" && pjdfstest -c "$work/pjdfstest.toml" -p "$work/mnt" > "$work/mnt.log" 2>&1) || true
grep '^Summary' "$work/mnt.log"
grep -q '^Summary' "$work/mnt.log" || { tail -50 "$work/mnt.log"; echo "pjdfstest did not finish"; exit 1; }
no_extra_failures() { # LOG: what the mount failed beyond the plain directory, if anything
  local extra
  extra=$(comm -13 <(failed_tests "$work/plain.log") <(failed_tests "$1"))
  if [ -n "$extra" ]; then
    echo "failures through clawfs that the plain directory does not have:"
    echo "$extra"
    for t in $extra; do grep -A3 "^$t " "$1"; done
    exit 1
  fi
  echo "pjdfstest: no extra failures (plain: $(grep -oE '[0-9]+ passed' "$work/plain.log" | head -1), clawfs: $(grep -oE '[0-9]+ passed' "$1" | head -1))"
}
no_extra_failures "$work/mnt.log"

fsx_ok() { # FILE LOG
  (cd "$work" && fsx -N 100000 -S 20261121 -P "$work" "$1" > "$2" 2>&1) || { tail -40 "$2"; echo "fsx failed"; exit 1; }
  tail -1 "$2"
  grep -q 'All operations completed A-OK' "$2"
}
echo "-- fsx: 100000 operations through the mount"
fsx_ok "$work/mnt/fsx.file" "$work/fsx.log"

echo "-- the same under tmp/, not versioned: passed through to the real files"
mkdir -p "$work/mnt/tmp/pjd"
"$bin" status "$work/mnt" | grep '^passthrough on' || { echo "passthrough is not on"; exit 1; }
(cd "$work/mnt/tmp/pjd" && pjdfstest -c "$work/pjdfstest.toml" -p "$work/mnt/tmp/pjd" > "$work/tmp.log" 2>&1) || true
grep '^Summary' "$work/tmp.log"
no_extra_failures "$work/tmp.log"
fsx_ok "$work/mnt/tmp/fsx.file" "$work/fsx-tmp.log"
"$bin" unmount "$work/mnt"
echo "posix: 4 passed, 0 failed"
