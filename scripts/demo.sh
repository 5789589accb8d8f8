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
# The web app (unsubscribe links, open/click tracking, follow-up pages) on 8000, or a free port.
WEB_PORT=8000
if (echo > /dev/tcp/127.0.0.1/$WEB_PORT) 2>/dev/null; then WEB_PORT=$(free_port); fi
export MAILSHOT_BASE_URL="http://127.0.0.1:$WEB_PORT"
export MAILSHOT_ADMIN_USER=admin MAILSHOT_ADMIN_PASSWORD=demo
# The demo's readers below open their mail within seconds of it leaving, faster than any person:
# keep them counted as people (in production, hits that fast are taken for link scanners).
export MAILSHOT_TRACKING_MACHINE_SECONDS=0

# 1. Prefect server (reused if a previous demo left it running).
API_PORT=4200
if ! curl -sf "http://127.0.0.1:$API_PORT/api/health" >/dev/null 2>&1; then
  if (echo > /dev/tcp/127.0.0.1/$API_PORT) 2>/dev/null; then API_PORT=$(free_port); fi
  echo "== starting Prefect server on 127.0.0.1:$API_PORT (log: $DEMO/prefect-server.log)"
  # Finished flow runs are deleted after 30 days (Prefect keeps them forever by default: README, Retention).
  PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED=events,flow_runs PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD=2592000 \
    nohup "$BIN/prefect" server start --host 127.0.0.1 --port "$API_PORT" > "$DEMO/prefect-server.log" 2>&1 &
  echo $! > "$DEMO/prefect-server.pid"
  for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$API_PORT/api/health" >/dev/null 2>&1 && break; sleep 0.5; done
fi
export PREFECT_API_URL="http://127.0.0.1:$API_PORT/api"

# 2. Local SMTP relay writing messages to demo-out/.
RELAY_PORT=$(free_port)
export MAILSHOT_SMTP_PORT=$RELAY_PORT
"$BIN/python" -m mailshot_core.devtools.relay --port "$RELAY_PORT" --out-dir demo-out --pidfile "$DEMO/relay.pid" \
  > "$DEMO/relay.log" 2>&1 &
RELAY=$!
trap 'kill $RELAY 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do [ -s "$DEMO/relay.pid" ] && break; sleep 0.1; done
echo "== local relay: $(cat "$DEMO/relay.log")"

# 3. The web app, left running with the Prefect server (make demo-stop stops both).
test -f "$DEMO/web.pid" && kill "$(cat "$DEMO/web.pid")" 2>/dev/null || true
echo "== mailshot web --port $WEB_PORT (log: $DEMO/web.log)"
nohup "$BIN/mailshot" web --port "$WEB_PORT" > "$DEMO/web.log" 2>&1 &
echo $! > "$DEMO/web.pid"
for _ in $(seq 1 100); do curl -sf -o /dev/null "$MAILSHOT_BASE_URL/admin/login" && break; sleep 0.2; done

# 4. A list of 1,000 demo subscribers (plus two bad rows, reported and skipped).
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
echo "== readers: 300 open the message, 100 click its link, 3 unsubscribe with one click (RFC 8058),"
echo "   1 open comes from Apple Mail's privacy proxy (a machine: counted apart)"
"$BIN/python" scripts/demo/readers.py demo-out "$MAILSHOT_BASE_URL"
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
  - the follow-up pages: $MAILSHOT_BASE_URL/admin/  (user admin, password demo)
  - an unsubscribe page: the List-Unsubscribe URL of any message in demo-out/
The Prefect server and the web app keep running for you to look around; stop them with: make demo-stop
MSG
