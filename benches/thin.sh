#!/usr/bin/env bash
# Thinning a remote, side by side with restic, against the same loopback S3 server (s3s-fs):
# the agent-state fixture's `gen.py`, then ROUNDS × `mutate.py` ("an hour of agent work"), with
# a clawfs push and a restic backup after each; then both thinned to the newest moment or
# snapshot: `clawfs prune --keep-within 0s --hourly 0s --daily 0s --remote origin` (unmounted,
# so the row is the prune alone) and `restic forget --keep-last 1 --prune`. For each: wall time,
# bucket bytes before and after, requests the server answered, peak RSS. Then a clone of the
# thinned bucket on a "new machine", checked against the real files.
#   benches/thin.sh [ROUNDS] [FIXTURES_DIR]   (defaults: 10, ../shared/fixtures/agent-state)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rounds=${1:-10}
fixtures=$(realpath "${2:-../shared/fixtures/agent-state}")
for t in restic /usr/bin/time; do
  command -v "$t" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic time >/dev/null; }
done
command -v s3s-fs >/dev/null || cargo install --locked s3s-fs --version 0.14.1 --features binary
cargo build --release --locked -q
bin="$PWD/target/release/clawfs"
work=$(mktemp -d /var/tmp/clawfs-thin.XXXXXX)
export HOME="$work/home" CLAWFS_PASSPHRASE=bench-passphrase RESTIC_PASSWORD=bench-passphrase
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret CLAWFS_LOG=warn
mkdir -p "$HOME" "$work/s3/claw" "$work/s3/restic"
port=$((20000 + RANDOM % 20000))
RUST_LOG=s3s::service=debug s3s-fs --host 127.0.0.1 --port $port \
  --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" > "$work/s3.log" 2>&1 &
s3pid=$!
a="$work/state"
cleanup() {
  cd /
  "$bin" unmount "$a" >/dev/null 2>&1 || fusermount3 -u -z "$a" 2>/dev/null || true
  kill $s3pid 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
sleep 1
ep="http://127.0.0.1:$port"
# restic on a local directory: its prune fails against s3s-fs ("packs from index missing in
# repo", the listing comes back short), so its row has no request count.
restic_repo="$work/s3/restic/repo"
excludes=(--exclude '*-shm' --exclude '*.lock' --exclude "$a/plugin-runtime-deps"
  --exclude "$a/cache" --exclude "$a/media" --exclude "$a/tmp")
reqs() { grep -c "s3s::service: req: Request { method: [A-Z]*, uri: /$1" "$work/s3.log" || true; }
bytes() { du -sb "$work/s3/$1" | cut -f1; }
claw() { "$bin" -C "$a" "$@"; }

# The state directory exists before clawfs does (the first mount takes it in); the agent's
# work goes through the mount.
python3 "$fixtures/gen.py" "$a" >/dev/null
claw remote add origin s3://claw/agent --endpoint "$ep" --path-style --schedule daily >/dev/null
claw mount "$a" >/dev/null
restic -r "$restic_repo" init >/dev/null
snap() {
  sleep 1.2
  claw push --wait >/dev/null
  restic -r "$restic_repo" backup -q "${excludes[@]}" "$a" >/dev/null
}
snap
for i in $(seq 1 "$rounds"); do python3 "$fixtures/mutate.py" "$a" "$i" >/dev/null; snap; done
echo "clawfs: $(claw --json status | python3 -c "import json,sys; print(json.load(sys.stdin)['moments'])") moments; restic: $((rounds + 1)) snapshots"
claw unmount "$a" >/dev/null

echo "| tool | wall | bucket before | bucket after | requests | peak RSS |"
echo "|---|---|---|---|---|---|"
# row NAME BUCKET CMD...
row() {
  local name=$1 bucket=$2; shift 2
  local r0 b0 t0 t1
  r0=$(reqs "$bucket"); b0=$(bytes "$bucket")
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$@" > "$work/out" 2>"$work/err" || { cat "$work/err"; exit 1; }
  t1=$(date +%s.%N)
  printf "| %-7s | %6.2f s | %7.2f MB | %7.2f MB | %5d | %4.0f MiB |\n" "$name" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "$b0 / 1000000" | bc -l)" "$(echo "$(bytes "$bucket") / 1000000" | bc -l)" \
    "$(( $(reqs "$bucket") - r0 ))" "$(echo "$(cat "$work/rss") / 1024" | bc -l)"
}
row clawfs claw "$bin" -C "$a" --json prune --keep-within 0s --hourly 0s --daily 0s --remote origin
python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))['remotes'][0]
print(f\"  clawfs: {r['moments_before']} -> {r['moments_after']} moments, {r['segments_before']} -> {r['segments_after']} log segments, {r['packs_removed']} of {r['packs_before']} packs deleted, {r['chunks_copied']} chunks ({r['bytes_copied']} bytes) uploaded again\")
" "$work/out"
row restic restic restic -r "$restic_repo" forget -q --keep-last 1 --prune

# A new machine clones the thinned bucket.
nm="$work/new"
t0=$(date +%s.%N)
"$bin" -C "$nm/state" clone --from s3://claw/agent --endpoint "$ep" --path-style >/dev/null
echo "clone of the thinned bucket: $(echo "$(date +%s.%N) - $t0" | bc) s"
diff -r --exclude='*-shm' --exclude='*.lock' --exclude=plugin-runtime-deps --exclude=cache \
  --exclude=media --exclude=tmp --exclude='credentials' --exclude='auth-profiles.json' "$a" "$nm/state" >/dev/null \
  && echo "the clone matches the real files" || { echo "the clone differs from the real files"; exit 1; }
