#!/usr/bin/env bash
# Schemathesis against the live server: every operation in openapi.yaml, generated valid and invalid requests,
# checked for no 5xx and for answers that the spec describes (status codes, content types, bodies).
#
# The server is the debug binary the tests built (GRANTBRIDGE_BIN to use another), on a free loopback port, with
# a fresh SQLite database and a config with a source of each kind and a static admin token of the operate role.
# Schemathesis comes from PyPI, pinned, into a virtual environment under a temporary directory.
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (per operation, default 100), SCHEMATHESIS_SEED (default: random),
# SCHEMATHESIS_CHECKS (default: no 5xx, and status codes, content types and bodies as documented).
# SCHEMATHESIS_DATABASE_URL: an empty database to use instead of the temporary SQLite one (e.g. PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
BIN="${GRANTBRIDGE_BIN:-${CARGO_TARGET_DIR:-target}/debug/grantbridge}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
CHECKS="${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}"

if [ ! -x "$BIN" ]; then
  cargo build --locked --bin grantbridge
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "-- installing schemathesis $SCHEMATHESIS_VERSION"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"

# Secrets the config reads from the environment; the admin token is known to the server by its SHA-256 only.
token="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
token_sha256="$(printf %s "$token" | sha256sum | cut -d' ' -f1)"
SCHEMATHESIS_JIRA_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
SCHEMATHESIS_SERVICENOW_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export SCHEMATHESIS_JIRA_SECRET SCHEMATHESIS_SERVICENOW_SECRET

cat >"$work/grantbridge.toml" <<EOF
[server]
listen = "127.0.0.1:0"

[database]
url = "${SCHEMATHESIS_DATABASE_URL:-sqlite://$work/grantbridge.db}"

[sources.jira]
kind = "jira"
[[sources.jira.verify]]
scheme = "jira_hub_signature"
secrets = [{ env = "SCHEMATHESIS_JIRA_SECRET" }]

[sources.servicenow]
kind = "servicenow"
[[sources.servicenow.verify]]
scheme = "hmac_sha256"
header = "X-Signature"
encoding = "base64"
timestamp_header = "X-Timestamp"
tolerance_secs = 300
secrets = [{ env = "SCHEMATHESIS_SERVICENOW_SECRET" }]

[[admin.tokens]]
name = "schemathesis"
sha256 = "$token_sha256"
role = "operate"

[policy]
dry_run = true

[[policy.rules]]
name = "portal-access"
request_types = ["Permissions portal access"]
require_confirmation = false
[[policy.rules.grants]]
kind = "group_member"
group_id = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90"
label = "EPM - User Portal Access"
EOF

echo "-- starting $BIN serve"
GRANTBRIDGE_LOG_FORMAT=json GRANTBRIDGE_LOG=info "$BIN" serve --config "$work/grantbridge.toml" \
  >"$work/server.log" 2>&1 &
server_pid=$!

# The server picks its port (listen on port 0) and names it in its "listening" log line.
port=""
for _ in $(seq 1 300); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  port="$(python3 - "$work/server.log" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("message") == "grantbridge is listening" and entry.get("port"):
        print(entry["port"])
        break
PY
)"
  [ -n "$port" ] && break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "the server did not say which port it listens on:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
base="http://127.0.0.1:$port"

ready=""
for _ in $(seq 1 100); do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$base/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "$base/readyz did not answer 200:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

# One stored event, signed as Jira signs it, so that routes taking an `id` also see one that exists: path
# parameters named `id` take its id half of the time, and are generated the other half.
event_id="$(python3 - "$base/webhooks/jira" examples/events/jira-request-approved.json <<'PY'
import hashlib, hmac, json, os, sys, urllib.request
url, payload = sys.argv[1], open(sys.argv[2], "rb").read()
secret = os.environ["SCHEMATHESIS_JIRA_SECRET"].encode()
signature = "sha256=" + hmac.new(secret, payload, hashlib.sha256).hexdigest()
request = urllib.request.Request(
    url, data=payload, method="POST",
    headers={"Content-Type": "application/json", "X-Hub-Signature": signature},
)
with urllib.request.urlopen(request, timeout=10) as response:
    print(json.load(response)["event_id"])
PY
)"
cat >"$work/schemathesis.toml" <<EOF
[dictionaries.stored]
values = ["$event_id"]

[parameters]
"path.id" = { dictionary = "stored", probability = 0.5 }
EOF

echo "-- schemathesis against $base (at most $MAX_EXAMPLES examples per operation)"
seed=()
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then
  seed=(--seed "$SCHEMATHESIS_SEED")
fi
status=0
# From the temporary directory: Schemathesis keeps its cache (.schemathesis/) in the working directory.
spec="$PWD/openapi.yaml"
(cd "$work" && "$work/venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$spec" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks "$CHECKS" \
  --max-examples "$MAX_EXAMPLES" \
  --phases examples,coverage,fuzzing \
  --workers 1 \
  --request-timeout 10 \
  --no-shrink \
  "${seed[@]}") || status=$?

if [ "$status" -ne 0 ]; then
  echo "-- schemathesis found problems (exit $status); the server's errors and last lines:" >&2
  grep '"level":"ERROR"' "$work/server.log" | tail -n 50 >&2 || true
  tail -n 20 "$work/server.log" >&2
fi
exit "$status"
