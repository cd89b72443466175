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

. tests/serve_keyed.sh
serve_keyed browser issue+lookup

status=0
BASE="http://$addr" KEY="$key" OUT_DIR="$(cd "$out_dir" && pwd)" CHROMIUM="$chromium" \
    PLAYWRIGHT_CORE="$cache/node_modules/playwright-core" \
    node tests/browser/docs.cjs || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- trackd log (last 30 lines)"
    tail -30 "$work/trackd.log"
fi
exit "$status"
