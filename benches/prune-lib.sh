# Sourced by the prune benches: a scratch state directory and store under /var/tmp (unmounted,
# and removed with the writer stopped, on exit) and the helpers `claw` and `field`.
# The caller sets: bin (the clawfs binary), name (the scratch directory's prefix) and probe (the
# file benches/probe.py writes).
work=$(mktemp -d "/var/tmp/clawfs-$name.XXXXXX")
dir="$work/state" store="$work/store"
mkdir -p "$dir"
export CLAWFS_LOG=${CLAWFS_LOG:-warn}
cleanup() {
  if [ -n "${probe:-}" ]; then touch "$probe.stop" 2>/dev/null || true; fi
  "$bin" unmount "$dir" >/dev/null 2>&1 || umount -l "$dir" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
claw() { "$bin" -C "$dir" --store "$store" "$@"; }
field() { claw --json status | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
