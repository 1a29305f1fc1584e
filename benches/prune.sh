#!/usr/bin/env bash
# Retention on the agent-state fixture: `gen.py` through a mount, then ROUNDS × `mutate.py`
# ("an hour of agent work" each), then `clawfs prune` keeping only the newest moment, on the
# live mount. Prints the moments and store bytes before and after, the prune's wall time, the
# slowest of a writer's fsync'd writes during it (writes wait for a prune), the daemon's RSS
# before and after, and checks that `verify` passes and that the newest moment restores to a
# copy identical to the real files.
#   benches/prune.sh [ROUNDS] [FIXTURES_DIR]   (defaults: 10, ../shared/fixtures/agent-state)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
fixtures=$(realpath "${2:-../shared/fixtures/agent-state}")
command -v /usr/bin/time >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
cargo build --release --locked -q
bin="$PWD/target/release/clawfs"
name=prune
# shellcheck source=benches/prune-lib.sh
. benches/prune-lib.sh
probe="$dir/agent/probe.txt"
rss() { ps -o rss= -C clawfs | sort -n | tail -1; }
claw mount "$dir" >/dev/null
python3 "$fixtures/gen.py" "$dir/agent" >/dev/null
sleep 1.5
for i in $(seq 1 "$rounds"); do python3 "$fixtures/mutate.py" "$dir/agent" "$i" >/dev/null; sleep 1.2; done
echo "before: $(field moments) moments, store $(field store_bytes) bytes, daemon RSS $(rss) KiB"
python3 benches/probe.py "$probe" > "$work/probe.out" &
writer=$!
sleep 1
/usr/bin/time -f "prune: %e s wall" "$bin" -C "$dir" --store "$store" prune \
  --keep-within 0s --hourly 0s --daily 0s
echo "after: $(field moments) moments, store $(field store_bytes) bytes, daemon RSS $(rss) KiB"
touch "$probe.stop"; wait "$writer"; cat "$work/probe.out"; rm -f "$probe.stop"
claw verify
claw restore --at now "$work/back" >/dev/null
diff -r --exclude='*-shm' --exclude='probe.txt*' "$dir" "$work/back" >/dev/null
echo "the newest moment restores identical to the real files"
