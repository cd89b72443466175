#!/usr/bin/env bash
# tests/schemathesis.sh: property-based API testing of the live server against its own
# /openapi.json with schemathesis (pinned below, installed into a venv under ~/.cache).
#
# Starts `trackd serve` (debug build, embedded defaults, a temporary data directory, a free
# port), runs schemathesis on the operations selected by PATH_FILTER, and fails on any
# failure: a 5xx, an undocumented status, content type or header, or a body that violates the
# schema. `.ci/run` calls it after `cargo test`.
#
#   tests/schemathesis.sh [--max-examples N] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

# The operations under test (a regular expression over the OpenAPI paths): all of them. The
# policy routes serve the bundled sample data (no policy database is configured).
PATH_FILTER='.*'

SCHEMATHESIS_VERSION=4.32.5
# Checks that hold for every documented operation. positive_data_acceptance and
# negative_data_rejection are left out: the query rules (assigned country codes in any case,
# decimal weights with bounds) are wider or narrower than a JSON Schema can say exactly, so
# those two checks would flag the schema's approximations rather than the server.
# ignored_auth: a route that declares the API key must refuse a request without one.
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,missing_required_header,ignored_auth
MAX_EXAMPLES=${MAX_EXAMPLES:-100}
build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --max-examples) MAX_EXAMPLES=${2:?}; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "usage: $0 [--max-examples N] [--no-build]" >&2; exit 64 ;;
    esac
done

venv="${XDG_CACHE_HOME:-$HOME/.cache}/trackd/schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -x "$venv/bin/st" ]; then
    echo "schemathesis.sh: installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# TRACKD_BIN: a binary built already (the integration test passes its own).
bin=${TRACKD_BIN:-target/debug/trackd}
if [ "$build" = 1 ] && [ -z "${TRACKD_BIN:-}" ]; then
    cargo build --quiet --bin trackd
fi

# A key with every scope: the requests carry it, and ignored_auth checks that they need it.
. tests/serve_keyed.sh
serve_keyed schemathesis issue+lookup+void+policy

status=0
# schemathesis keeps a cache directory in its working directory: keep it out of the tree.
cd "$work"
# One worker: with two threads, Python 3.11's ast module can fail inside schemathesis with
# "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905, state shared by
# threads), an error of the tool, not of trackd.
# /metrics is on the operations listener (none here): not on this port.
"$venv/bin/st" run "http://$addr/openapi.json" \
    --include-path-regex "$PATH_FILTER" \
    --exclude-path /metrics \
    --header "Authorization: Bearer $key" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --seed 20261123 \
    --workers 1 \
    --no-color || status=$?
if ! kill -0 "$pid" 2>/dev/null; then
    echo "schemathesis.sh: trackd died during the run" >&2
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "--- trackd log (last 50 lines)"
    tail -50 "$work/trackd.log"
fi
exit "$status"
