#!/usr/bin/env bash
# make demo: a real mailshot end to end on the embedded defaults.
# SQLite database, a Prefect server (left running so you can look at the UI), and a local SMTP relay
# that writes every message it accepts under ./demo-out/.  Safe to run again: it starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=.demo
mkdir -p "$DEMO"
rm -rf demo-out "$DEMO/mailshot.db" "$DEMO"/mailshot.db-*

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

export PREFECT_HOME="$PWD/$DEMO/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false
export MAILSHOT_DATABASE_URL="sqlite:///$PWD/$DEMO/mailshot.db"
export MAILSHOT_FROM_EMAIL="newsletter@demo.example.org" MAILSHOT_FROM_NAME="Mailshot Demo"
export MAILSHOT_BASE_URL="http://127.0.0.1:8000"

# 1. Prefect server (reused if a previous demo left it running).
API_PORT=4200
if ! curl -sf "http://127.0.0.1:$API_PORT/api/health" >/dev/null 2>&1; then
  if (echo > /dev/tcp/127.0.0.1/$API_PORT) 2>/dev/null; then API_PORT=$(free_port); fi
  echo "== starting Prefect server on 127.0.0.1:$API_PORT (log: $DEMO/prefect-server.log)"
  nohup "$BIN/prefect" server start --host 127.0.0.1 --port "$API_PORT" > "$DEMO/prefect-server.log" 2>&1 &
  echo $! > "$DEMO/prefect-server.pid"
  for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$API_PORT/api/health" >/dev/null 2>&1 && break; sleep 0.5; done
fi
export PREFECT_API_URL="http://127.0.0.1:$API_PORT/api"

# 2. Local SMTP relay writing messages to demo-out/.
RELAY_PORT=$(free_port)
export MAILSHOT_SMTP_PORT=$RELAY_PORT
"$BIN/python" -m mailshot_core.devrelay --port "$RELAY_PORT" --out-dir demo-out --pidfile "$DEMO/relay.pid" \
  > "$DEMO/relay.log" 2>&1 &
RELAY=$!
trap 'kill $RELAY 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do [ -s "$DEMO/relay.pid" ] && break; sleep 0.1; done
echo "== local relay: $(cat "$DEMO/relay.log")"

# 3. A list of 1,000 demo subscribers (plus two bad rows, reported and skipped).
"$BIN/python" - > "$DEMO/subscribers.csv" <<'PY'
import random
random.seed(7)
first = ["Alice", "Bruno", "Chloé", "Dmitri", "Émilie", "Farid", "Gaëlle", "Hugo", "Inès", "José"]
print("email,nom,lang")
for i in range(1000):
    name = f"{random.choice(first)} {i}"
    print(f"reader{i}@demo.example.org,{name},{random.choice(['fr', 'en'])}")
print("not-an-address,Broken Row,fr")
print("someone@@demo.example.org,Another Broken Row,en")
PY
M="$BIN/mailshot"
echo "== mailshot lists create demo"
$M lists create demo --title "Mailshot demo"
echo "== mailshot subscribers import $DEMO/subscribers.csv --list demo"
$M subscribers import "$DEMO/subscribers.csv" --list demo
echo "== mailshot create --subject 'Hello {{ nom }}, your demo newsletter' --html scripts/demo/newsletter.html --list demo"
ID=$($M create --subject 'Hello {{ nom }}, your demo newsletter' --html scripts/demo/newsletter.html --list demo | tail -n 1)
echo "== mailshot test $ID you@demo.example.org"
$M test "$ID" you@demo.example.org
echo "== mailshot send $ID"
$M send "$ID"
echo "== mailshot status $ID"
$M status "$ID"

N=$(find demo-out -name '*.eml' | wc -l)
cat <<MSG

Done: sending $ID went out through the local relay; $N messages (1,000 + 1 test) are in ./demo-out/.
Where to look:
  - a message:           less demo-out/2.eml
  - the Prefect UI:      http://127.0.0.1:$API_PORT  (flow run "mailshot-$ID: ...", its artifacts)
  - counters:            MAILSHOT_DATABASE_URL=$MAILSHOT_DATABASE_URL $M status $ID --json
  - one address:         MAILSHOT_DATABASE_URL=$MAILSHOT_DATABASE_URL $M subscribers show reader1@demo.example.org
The Prefect server keeps running for you to look around; stop it with: make demo-stop
MSG
