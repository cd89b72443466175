# tests/serve_keyed.sh, sourced by the scripts that test a live trackd (schemathesis.sh,
# browser.sh): `serve_keyed CLIENT SCOPES` starts `$bin serve` (embedded defaults, a temporary
# data directory, a free port, no operations listener) with one API key, waits until it is
# ready, and sets `addr`, `key`, `pid` and `work` (removed, with the server stopped, on exit).

serve_keyed() { # CLIENT SCOPES
    work=$(mktemp -d "${TMPDIR:-/tmp}/trackd-$1.XXXXXX")
    pid=""
    trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
    local port key_out entry
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    addr=127.0.0.1:$port
    key_out=$("$bin" key new --client "$1" --scopes "$2")
    key=$(printf '%s\n' "$key_out" | awk '/^key:/ { print $2 }')
    entry=$(printf '%s\n' "$key_out" | awk '/^entry:/ { print $2 }')
    TRACKD_LOG__LEVEL=warn TRACKD_AUTH__KEYS="$entry" "$bin" serve --listen "$addr" --admin-listen "" \
        --data-dir "$work/data" >"$work/trackd.log" 2>&1 &
    pid=$!
    ready() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://$addr/readyz" 2>/dev/null; }
    for _ in $(seq 100); do
        ready && return 0
        kill -0 "$pid" 2>/dev/null || { echo "trackd exited:"; cat "$work/trackd.log"; exit 1; }
        sleep 0.1
    done
    echo "trackd not ready:"; cat "$work/trackd.log"; exit 1
}
