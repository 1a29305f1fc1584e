#!/usr/bin/env bash
# Replication side by side with restic, in one run, against the same loopback S3 server
# (s3s-fs): first push of the agent-state fixture, push after `mutate.py` ("an hour of agent
# work"), restore on a "new machine" (fresh HOME, empty store). For each: wall time, bytes that
# reached the bucket, requests the server answered, peak RSS of the process doing the work.
#   benches/replicate.sh [FIXTURES_DIR]   (default: ../shared/fixtures/agent-state)
# clawfs pushes here run from the CLI on the unmounted directory (the same code the daemon's
# replicator runs), so /usr/bin/time sees that work alone; the first mount, which reads and
# chunks the tree into the store, is a row of its own. restic is given clawfs's default
# exclusions (the 15,000-file plugin-runtime-deps/ tree, -shm, lock files, cache/, media/, tmp/)
# so both back up the same files.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
fixtures=$(realpath "${1:-../shared/fixtures/agent-state}")
for t in restic /usr/bin/time; do
  command -v "$t" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic time >/dev/null; }
done
command -v s3s-fs >/dev/null || cargo install --locked s3s-fs --version 0.14.1 --features binary
cargo build --release --locked -q
bin="$PWD/target/release/clawfs"
work=$(mktemp -d /var/tmp/clawfs-repl.XXXXXX)
export HOME="$work/home" CLAWFS_PASSPHRASE=bench-passphrase RESTIC_PASSWORD=bench-passphrase
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret CLAWFS_LOG=warn
mkdir -p "$HOME" "$work/s3/claw" "$work/s3/restic"
port=$((20000 + RANDOM % 20000))
RUST_LOG=s3s::service=debug s3s-fs --host 127.0.0.1 --port $port \
  --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" > "$work/s3.log" 2>&1 &
s3pid=$!
cleanup() {
  cd /
  "$bin" unmount "$work/agent" >/dev/null 2>&1 || fusermount3 -u -z "$work/agent" 2>/dev/null || true
  kill $s3pid 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
sleep 1
ep="http://127.0.0.1:$port"
python3 "$fixtures/gen.py" "$work/agent" >/dev/null
restic_repo="s3:$ep/restic/repo"

reqs() { grep -c "s3s::service: req: Request { method: [A-Z]*, uri: /$1" "$work/s3.log" || true; }
bytes() { du -sb "$work/s3/$1" | cut -f1; }
# run NAME BUCKET CMD...: one row.
run() {
  local name=$1 bucket=$2; shift 2
  local r0 b0 t0 t1
  r0=$(reqs "$bucket"); b0=$(bytes "$bucket")
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$@" > "$work/out" 2>"$work/err" || { cat "$work/err"; exit 1; }
  t1=$(date +%s.%N)
  printf "| %-28s | %7.2f s | %9.2f MB | %6d | %6.0f MiB |\n" "$name" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "($(bytes "$bucket") - $b0) / 1000000" | bc -l)" "$(( $(reqs "$bucket") - r0 ))" \
    "$(echo "$(cat "$work/rss") / 1024" | bc -l)"
}

a="$work/agent"
excludes=(--exclude '*-shm' --exclude '*.lock' --exclude "$a/plugin-runtime-deps"
  --exclude "$a/cache" --exclude "$a/media" --exclude "$a/tmp")
"$bin" -C "$work/agent" remote add s3 s3://claw/agent --endpoint "$ep" --path-style --schedule daily >/dev/null
restic -r "$restic_repo" init -q >/dev/null

echo "| run | wall | bucket grew by | requests | peak RSS |"
echo "|---|---|---|---|---|"
# clawfs: the store learns the tree through one mount (what a user does), then pushes.
first_mount() { "$bin" mount "$work/agent" >/dev/null && "$bin" unmount "$work/agent"; }
run "clawfs first mount (import)" claw bash -c "$(declare -f first_mount); bin=$bin work=$work; first_mount"
run "clawfs first push" claw "$bin" -C "$work/agent" push
run "restic first backup" restic restic -r "$restic_repo" backup -q "${excludes[@]}" "$work/agent"
"$bin" mount "$work/agent" >/dev/null
python3 "$fixtures/mutate.py" "$work/agent" >/dev/null
"$bin" unmount "$work/agent"
run "clawfs push after mutate.py" claw "$bin" -C "$work/agent" push
run "restic backup after mutate.py" restic restic -r "$restic_repo" backup -q "${excludes[@]}" "$work/agent"
export HOME="$work/home2"; mkdir -p "$HOME"
run "clawfs restore (new machine)" claw "$bin" restore --from s3://claw/agent --endpoint "$ep" --path-style "$work/r-claw"
grep -o "downloaded .*" "$work/out" | sed 's/^/  clawfs restore: /'
run "restic restore (new machine)" restic restic -r "$restic_repo" restore latest --target "$work/r-restic" -q
diff -r "$work/agent" "$work/r-claw" -q --exclude credentials --exclude auth-profiles.json \
  --exclude plugin-runtime-deps --exclude '*-shm' \
  && echo "clawfs restore: identical to the tree (secrets and default exclusions aside)"
