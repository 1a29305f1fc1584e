#!/usr/bin/env bash
# The daily prune on a live mount: HOURS hours of history from two days ago, FILES small notes
# written in each hour (one moment each, and every tenth appends to a shared MEMORY.md), then
# `clawfs prune` with its default policy (every moment of the last day, the last of each hour for
# a week), which folds each hour's moments into its last, while a writer fsyncs every 5 ms.
# The daemon records each past hour under libfaketime, set back to that hour. Prints the moments
# before and after, the prune's wall time and the writer's slowest write (writes wait while a
# run of moments is folded), then checks `verify` and the newest moment against the real files.
#   benches/prune-hours.sh [HOURS] [FILES]   (defaults: 8, 2000; CLAWFS_BIN: another build)
set -euo pipefail
cd "$(dirname "$0")/.."
hours=${1:-8}
files=${2:-2000}
if ! dpkg -L libfaketime >/dev/null 2>&1 || ! command -v /usr/bin/time >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime time >/dev/null
fi
if [ -z "${CLAWFS_BIN:-}" ]; then
  cargo build --release --locked -q
fi
bin="${CLAWFS_BIN:-$PWD/target/release/clawfs}"
name=prune-hours
# shellcheck source=benches/prune-lib.sh
. benches/prune-lib.sh
probe="$dir/probe.txt"
for h in $(seq 0 $((hours - 1))); do
  # libfaketime preloaded by hand (the faketime wrapper would wait for the daemon to exit), its
  # clock only: files' times stay real, as the next mount sees them.
  LD_PRELOAD="$(dpkg -L libfaketime | grep 'libfaketimeMT.so.1$')" NO_FAKE_STAT=1 \
    FAKETIME="-$((48 + hours - h))h" \
    "$bin" --store "$store" mount "$dir" >/dev/null
  python3 - "$dir" "$h" "$files" <<'PY'
import os, sys
d, h, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(f"{d}/hour{h}", exist_ok=True)
for i in range(n):
    with open(f"{d}/hour{h}/note{i}.md", "w") as f:
        f.write(f"hour {h}, note {i}\n" * 20)
    if i % 10 == 0:
        with open(f"{d}/MEMORY.md", "a") as f:
            f.write(f"- hour {h}, note {i}\n")
PY
  "$bin" unmount "$dir" >/dev/null
done
claw mount "$dir" >/dev/null
echo "before: $(field moments) moments over $hours past hours, store $(field store_bytes) bytes"
python3 benches/probe.py "$probe" > "$work/probe.out" &
writer=$!
sleep 1
/usr/bin/time -f "prune: %e s wall" "$bin" -C "$dir" --store "$store" prune
echo "after: $(field moments) moments, store $(field store_bytes) bytes"
touch "$probe.stop"; wait "$writer"; cat "$work/probe.out"; rm -f "$probe.stop"
claw verify
claw restore --at now "$work/back" >/dev/null
diff -r --exclude='probe.txt*' "$dir" "$work/back" >/dev/null
echo "the newest moment restores identical to the real files"
