"""End-to-end check of the scheduled and operator deployments against a real `prefect server start`.

Starts a Prefect server, a local relay and `mailshot serve` (dispatch every 10 s instead of 60 s),
then, as an operator would:

1. schedules a sending with the CLI (`mailshot create --start-at` a few seconds ahead): the
   `dispatch-mailshots` deployment, run by its schedule, must start it;
2. fills the `create-and-send` form through the API the Prefect UI posts to
   (``POST /api/deployments/{id}/create_flow_run``), after checking that the form's schema has a
   described field per parameter and that the server refuses a form without `lists`;
and checks that both sendings end with every recipient served exactly once by the relay, that
dispatch runs were created by the schedule (``auto_scheduled``), and that `purge-stats/daily`
carries its daily cron (its run is tested in tests/sending/test_dispatch.py: running it here too would
only add a process start on a busy 2-core machine).
Used by tests/flows/test_schedules.py; run it by hand with `.venv/bin/python scripts/schedule_check.py
[postgresql+asyncpg://user@host/db]` (Prefect's server on SQLite when no URL is given).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from deployment_check import BIN, free_port, run, wait_http

RECIPIENTS = 20
DEPLOYMENTS = {
    "send-mailshot/default",
    "send-test/default",
    "dispatch-mailshots/default",
    "purge-stats/daily",
    "import-legacy/default",
    "create-and-send/default",
}


def api(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    for attempt in range(10):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            # The SQLite-backed server answers 503 while its database is locked by a busy writer
            # (reference/prefect.md §8, [I2]): what the UI would retry too.
            if exc.code != 503 or attempt == 9:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"{what}: not within {timeout} s")


def main(argv: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="mailshot-schedule-"))
    api_port, relay_port = free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSHOT_", "PREFECT_"))}
    env.update(
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_API_URL=base,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        # The UI's run form posts to the API used below; serving the UI itself only slows the start.
        PREFECT_UI_ENABLED="false",
        MAILSHOT_DATABASE_URL=f"sqlite:///{work}/mailshot.db",
        MAILSHOT_SMTP_PORT=str(relay_port),
        MAILSHOT_SMTP_HOST="127.0.0.1",
        MAILSHOT_DISPATCH_INTERVAL="10",
    )
    if argv:  # a PostgreSQL database for Prefect's server: starts in half the time of a fresh SQLite one (M21)
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = argv[0]
    procs: list[subprocess.Popen[bytes]] = []
    logs = work / "logs"
    logs.mkdir()

    def start(name: str, cmd: list[str]) -> None:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    t0 = time.monotonic()
    ok = False

    def stage(what: str) -> None:
        print(f"{time.monotonic() - t0:5.1f} s  {what}", flush=True)

    try:
        start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(api_port)])
        start(
            "relay",
            [
                sys.executable,
                "-m",
                "mailshot_core.devtools.relay",
                "--port",
                str(relay_port),
                "--out-dir",
                str(work / "out"),
            ],
        )
        mailshot = [sys.executable, "-m", "mailshot_core.cli"]

        def statuses() -> list[dict[str, Any]]:
            # Read the database directly: a CLI process per poll would compete for the 2 cores.
            with contextlib.closing(sqlite3.connect(work / "mailshot.db")) as con:
                cur = con.execute("SELECT subject, status, sent, start_at, started_at FROM mailshot")
                return [{"subject": a, "status": b, "sent": c, "start_at": d, "started_at": e} for a, b, c, d, e in cur]

        run([*mailshot, "lists", "create", "news"], env, work)
        (work / "subs.csv").write_text("email,nom\n" + "".join(f"s{i}@example.com,S {i}\n" for i in range(RECIPIENTS)))
        run([*mailshot, "subscribers", "import", "subs.csv", "--list", "news"], env, work)
        (work / "body.html").write_text("<p>Scheduled for {{ nom }}</p>")
        wait_http(f"{base}/health", 90)
        stage("server up")
        start("serve", [*mailshot, "serve"])
        # Due about when `serve` has registered the deployments (~7 s here), so dispatch finds it `init`.
        at = (datetime.now(UTC) + timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%S")
        scheduled = (
            run(
                [
                    *mailshot,
                    "create",
                    "--subject",
                    "Scheduled",
                    "--html",
                    "body.html",
                    "--list",
                    "news",
                    "--start-at",
                    at,
                ],
                env,
                work,
            )
            .strip()
            .splitlines()[-1]
        )
        assert [r["status"] for r in statuses()] == ["init"], statuses()

        def registered() -> dict[str, Any] | None:
            found = {}
            for name in DEPLOYMENTS:
                try:
                    found[name] = api(base, "GET", f"/deployments/name/{name}")
                except urllib.error.HTTPError:
                    return None
            return found

        deployments = wait_for("mailshot serve registers every deployment", registered, 90)
        stage("deployments registered")
        dispatch = deployments["dispatch-mailshots/default"]
        assert [s["schedule"].get("interval") for s in dispatch["schedules"]] == [10.0], dispatch["schedules"]
        purge = deployments["purge-stats/daily"]
        assert [s["schedule"].get("cron") for s in purge["schedules"]] == ["30 3 * * *"], purge["schedules"]

        # The UI renders this schema as the run form: every parameter described, the essential ones required.
        form = deployments["create-and-send/default"]["parameter_openapi_schema"]
        assert set(form["required"]) == {"subject", "html", "lists"}, form
        undescribed = [name for name, field in form["properties"].items() if not field.get("description")]
        assert undescribed == [], undescribed
        create_id = deployments["create-and-send/default"]["id"]
        try:
            api(base, "POST", f"/deployments/{create_id}/create_flow_run", {"parameters": {"subject": "No lists"}})
            raise AssertionError("a form without lists was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code in (409, 422), exc.code
        api(
            base,
            "POST",
            f"/deployments/{create_id}/create_flow_run",
            {
                "parameters": {
                    "subject": "From the form, {{ nom }}",
                    "html": "<p>Hello {{ nom }}</p>",
                    "lists": ["news"],
                }
            },
        )

        def ended() -> list[dict[str, Any]] | None:
            rows = statuses()
            return rows if len(rows) == 2 and all(r["status"] == "end" for r in rows) else None

        rows = wait_for("both sendings end", ended, 150)
        stage("sendings ended")
        received = [p.read_bytes() for p in (work / "out").glob("*.eml")]
        by_subject = {r["subject"]: r for r in rows}
        assert by_subject["Scheduled"]["sent"] == RECIPIENTS, rows
        when = {k: datetime.fromisoformat(by_subject["Scheduled"][k]) for k in ("start_at", "started_at")}
        assert when["started_at"] >= when["start_at"], when  # not started early
        assert by_subject["From the form, {{ nom }}"]["sent"] == RECIPIENTS, rows
        assert len(received) == 2 * RECIPIENTS, len(received)

        def dispatch_runs() -> list[dict[str, Any]]:
            runs: list[dict[str, Any]] = api(
                base,
                "POST",
                "/flow_runs/filter",
                {
                    "flow_runs": {
                        "deployment_id": {"any_": [dispatch["id"]]},
                        "state": {"type": {"any_": ["COMPLETED"]}},
                    }
                },
            )
            return [r for r in runs if r["auto_scheduled"]]

        scheduled_runs = wait_for("a scheduled dispatch run completes", dispatch_runs, 30)
        stage("scheduled dispatch run seen")
        print(
            f"sendings {scheduled} (scheduled) and the form's: {2 * RECIPIENTS} messages; "
            f"{len(scheduled_runs)} scheduled dispatch run(s); {time.monotonic() - t0:.0f} s"
        )
        print("schedule check: OK")
        ok = True
        return 0
    except Exception:
        for log_file in sorted(logs.iterdir()):
            print(f"--- {log_file.name} (tail)\n{log_file.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        raise
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3  # throw-away servers: no need to wait long for a clean shutdown
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        stage("stopped")
        if ok:  # kept when the check failed, for its logs
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
