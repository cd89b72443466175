#!/usr/bin/env bash
# tests/browser.sh: the /docs page in a real browser. Starts `trackd serve` (embedded
# defaults, an API key, a temporary data directory, a free port) and runs tests/browser/docs.cjs
# with playwright-core (pinned below, installed with npm under ~/.cache) driving Debian's
# Chromium (/usr/bin/chromium, or $CHROMIUM). The screenshot goes to $OUT_DIR (default
# target/browser/).
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT_VERSION=1.65.1
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || { echo "browser.sh: no Chromium at $chromium (Debian: apt-get install chromium)" >&2; exit 1; }
command -v node >/dev/null || { echo "browser.sh: no node (Debian: apt-get install nodejs npm)" >&2; exit 1; }

cache="${XDG_CACHE_HOME:-$HOME/.cache}/trackd/playwright-core-$PLAYWRIGHT_VERSION"
if [ ! -d "$cache/node_modules/playwright-core" ]; then
    echo "browser.sh: installing playwright-core $PLAYWRIGHT_VERSION into $cache" >&2
    mkdir -p "$cache"
    npm install --silent --no-audit --no-fund --prefix "$cache" "playwright-core@$PLAYWRIGHT_VERSION" >&2
fi

bin=${TRACKD_BIN:-target/debug/trackd}
[ -n "${TRACKD_BIN:-}" ] || cargo build --quiet --bin trackd
out_dir=${OUT_DIR:-target/browser}
mkdir -p "$out_dir"

work=$(mktemp -d "${TMPDIR:-/tmp}/trackd-browser.XXXXXX")
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
key_out=$("$bin" key new --client browser --scopes issue+lookup)
key=$(printf '%s\n' "$key_out" | awk '/^key:/ { print $2 }')
entry=$(printf '%s\n' "$key_out" | awk '/^entry:/ { print $2 }')
TRACKD_LOG__LEVEL=warn TRACKD_AUTH__KEYS="$entry" "$bin" serve --listen "$addr" --admin-listen "" \
    --data-dir "$work/data" >"$work/trackd.log" 2>&1 &
pid=$!
ready() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://$addr/readyz" 2>/dev/null; }
for _ in $(seq 100); do
    ready && break
    kill -0 "$pid" 2>/dev/null || { echo "trackd exited:"; cat "$work/trackd.log"; exit 1; }
    sleep 0.1
done

status=0
BASE="http://$addr" KEY="$key" OUT_DIR="$(cd "$out_dir" && pwd)" CHROMIUM="$chromium" \
    PLAYWRIGHT_CORE="$cache/node_modules/playwright-core" \
    node tests/browser/docs.cjs || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- trackd log (last 30 lines)"
    tail -30 "$work/trackd.log"
fi
exit "$status"
