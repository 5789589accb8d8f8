"""End-to-end check of the scheduled and operator deployments against a real `prefect server start`.

Starts a Prefect server, a local relay and `mailshot serve` (dispatch every 10 s instead of 10 minutes,
so the check also sees scheduled ticks), then, as an operator would:

1. schedules a sending with the CLI (`mailshot create --start-at` a few seconds ahead): the CLI
   creates its `send-mailshot/now` run for that time at once, and that run (not the dispatcher)
   must start it, not before its time;
2. runs the `create-and-send/form` deployment with the real CLI, passing an HTML file full of quotes
   the way the README says (`--params "$(python3 -c ...)"`, and `jq -n --rawfile ... | --params -`
   when jq is installed), with a test address: the [TEST] message goes out, then the sending;
3. sends a draft from Prefect: `prefect deployment run control-mailshot/by-id --param action=send`;
and checks that every sending ends with each recipient served exactly once by the relay, that each
sending's runs carry its tag `mailshot:<id>`, that the mailshot-sendings artifact lists them, that
dispatch runs were created by the schedule (``auto_scheduled``) without a concurrency limit, that the
form's schema has a described field per parameter and that the server refuses a form without `lists`.
Used by tests/flows/test_schedules.py; run it by hand with `.venv/bin/python scripts/schedule_check.py
[postgresql+asyncpg://user@host/db]` (Prefect's server on SQLite when no URL is given).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
from deployment_check import BIN, Processes, check_env, free_port, run, wait_http

RECIPIENTS = 20
# The README's "An HTML file with quotes" commands, as an operator types them (issue-42.html, news).
FORM_PYTHON = (
    "prefect deployment run create-and-send/form --param test_address=editor@example.org "
    '--params "$(python3 -c \'import json, sys; print(json.dumps({"subject": sys.argv[1], '
    '"lists": ["news"], "html": open(sys.argv[2]).read()}))\' \'Issue 42, {{ nom }}\' issue-42.html)"'
)
FORM_JQ = (
    'jq -n --rawfile html issue-43.html \'{subject: "Issue 43", lists: ["news"], html: $html}\' '
    "| prefect deployment run create-and-send/form --params -"
)
HTML = """<!doctype html>
<html><head><style>p.lead { color: #333; }</style></head>
<body>
<p class="lead">Hello "{{ nom }}", it's <b>our</b> 'issue' &amp; more</p>
<a href="https://example.org/?a=1&amp;b=2" title='single "and" double'>Read</a>
</body></html>
"""


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


def served_names() -> set[str]:
    """What `mailshot serve` registers (tests/flows/test_deployments.py checks the names themselves)."""
    from deployments.serve import deployments

    return {f"{d.flow_name}/{d.name}" for d in deployments()}


def tagged_runs(base: str, mailshot_id: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = api(
        base, "POST", "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [f"mailshot:{mailshot_id}"]}}}
    )
    return runs


def main(argv: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="mailshot-schedule-"))
    api_port, relay_port = free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}/api"
    env = check_env(
        work,
        api_port,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `prefect` and `python3` of this venv, as in the README
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        # The UI's run form posts to the API used below; serving the UI itself only slows the start.
        PREFECT_UI_ENABLED="false",
        MAILSHOT_SMTP_PORT=str(relay_port),
        MAILSHOT_SMTP_HOST="127.0.0.1",
        MAILSHOT_DISPATCH_INTERVAL="10",
    )
    if argv:  # a PostgreSQL database for Prefect's server: starts in half the time of a fresh SQLite one (M21)
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = argv[0]
    procs = Processes(env, work, work / "logs")
    start = procs.start

    t0 = time.monotonic()
    ok = False

    def stage(what: str) -> None:
        print(f"{time.monotonic() - t0:5.1f} s  {what}", flush=True)

    def shell(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], env=env, cwd=work, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

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

        def rows() -> list[dict[str, Any]]:
            # Read the database directly: a CLI process per poll would compete for the 2 cores.
            with contextlib.closing(sqlite3.connect(work / "mailshot.db")) as con:
                cur = con.execute(
                    "SELECT id, subject, status, sent, total, start_at, started_at, flow_run_id, html FROM mailshot"
                )
                names = [c[0] for c in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur]

        run([*mailshot, "lists", "create", "news"], env, work)
        (work / "subs.csv").write_text("email,nom\n" + "".join(f"s{i}@example.com,S {i}\n" for i in range(RECIPIENTS)))
        run([*mailshot, "subscribers", "import", "subs.csv", "--list", "news"], env, work)
        (work / "body.html").write_text("<p>Scheduled for {{ nom }}</p>")
        (work / "issue-42.html").write_text(HTML)
        (work / "issue-43.html").write_text(HTML.replace("our", "jq's"))
        draft = run([*mailshot, "create", "--subject", "Draft", "--html", "body.html", "--list", "news"], env, work)
        draft_id = int(draft.strip().splitlines()[-1])
        wait_http(f"{base}/health", 90)
        stage("server up")
        start("serve", [*mailshot, "serve"])

        def registered() -> dict[str, Any] | None:
            found = {}
            for name in served_names():
                try:
                    found[name] = api(base, "GET", f"/deployments/name/{name}")
                except urllib.error.HTTPError:
                    return None
            return found

        deployments = wait_for("mailshot serve registers every deployment", registered, 90)
        assert set(deployments) >= {"create-and-send/form", "control-mailshot/by-id", "dispatch-mailshots/sweep"}
        stage("deployments registered")
        dispatch = deployments["dispatch-mailshots/sweep"]
        assert [s["schedule"].get("interval") for s in dispatch["schedules"]] == [10.0], dispatch["schedules"]
        assert dispatch["concurrency_limit"] is None, dispatch  # concurrent ticks are harmless (compare-and-set)
        purge = deployments["purge-stats/daily"]
        assert [s["schedule"].get("cron") for s in purge["schedules"]] == ["30 3 * * *"], purge["schedules"]

        # 1. Scheduled from the CLI: its run is created now, for the start time.
        at = (datetime.now(UTC) + timedelta(seconds=15)).replace(microsecond=0)
        created = subprocess.run(
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
                f"{at:%Y-%m-%dT%H:%M:%S}",
            ],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        scheduled = int(created.stdout.strip().splitlines()[-1])
        said = [line for line in created.stderr.splitlines() if line.startswith("Prefect run ")]
        assert said and f"(tag mailshot:{scheduled})" in said[0], created.stderr
        cli_run = said[0].split()[2]
        stage(f"sending {scheduled} scheduled for {at:%H:%M:%S}: {said[0]}")

        # The UI renders this schema as the run form: every parameter described, the essential ones required.
        form = deployments["create-and-send/form"]["parameter_openapi_schema"]
        assert set(form["required"]) == {"subject", "html", "lists"}, form
        undescribed = [name for name, field in form["properties"].items() if not field.get("description")]
        assert undescribed == [], undescribed
        create_id = deployments["create-and-send/form"]["id"]
        try:
            api(base, "POST", f"/deployments/{create_id}/create_flow_run", {"parameters": {"subject": "No lists"}})
            raise AssertionError("a form without lists was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code in (409, 422), exc.code

        # 2. The form from the real CLI, with an HTML file full of quotes (README).
        shell(FORM_PYTHON)
        forms = ["Issue 42, {{ nom }}"]
        if shutil.which("jq"):
            shell(FORM_JQ)
            forms.append("Issue 43")
        else:
            print("jq not installed: its README command was not run")
        # 3. A draft sent from Prefect.
        shell(f"prefect deployment run control-mailshot/by-id --param mailshot_id={draft_id} --param action=send")
        stage("form and control runs created")

        def ended() -> list[dict[str, Any]] | None:
            found = rows()  # the draft, the scheduled sending and the form's
            return found if len(found) == 2 + len(forms) and all(r["status"] == "end" for r in found) else None

        wait_for("every sending ends", ended, 240)
        stage("sendings ended")
        by_subject = {r["subject"]: r for r in rows()}
        for subject in ("Scheduled", "Draft", *forms):
            assert by_subject[subject]["sent"] == by_subject[subject]["total"] == RECIPIENTS, by_subject[subject]
        received = [p.read_bytes() for p in (work / "out").glob("*.eml")]
        tests = [m for m in received if b"Subject: [TEST] Issue 42" in m]
        assert len(tests) == 1 and b"To: editor@example.org" in tests[0], len(tests)
        assert len(received) == len(by_subject) * RECIPIENTS + 1, len(received)
        for subject in forms:  # the quotes arrived as written (css-inline re-serialises the document)
            html = by_subject[subject]["html"]
            assert 'class="lead"' in html and "it's" in html and '"{{ nom }}"' in html, html
            assert "title='single \"and\" double'" in html or 'title="single &quot;and&quot; double"' in html, html

        when = {k: datetime.fromisoformat(by_subject["Scheduled"][k]) for k in ("start_at", "started_at")}
        assert when["started_at"] >= when["start_at"], when  # not started early
        runs = tagged_runs(base, scheduled)
        assert [r["id"] for r in runs] == [cli_run], runs  # the CLI's run started it, not a dispatcher tick
        assert by_subject["Scheduled"]["flow_run_id"] == cli_run
        for subject in ("Scheduled", "Draft", *forms):
            mid = by_subject[subject]["id"]
            # The sending ends a moment before its run reports Completed to the server.
            tagged = wait_for(
                f"the run of sending {mid} completes",
                lambda mid=mid: [r for r in tagged_runs(base, mid) if r["state_type"] == "COMPLETED"],
                30,
            )
            assert [r["id"] for r in tagged] == [by_subject[subject]["flow_run_id"]], (subject, tagged)
            assert set(tagged[0]["tags"]) == {"mailshot", f"mailshot:{mid}"}, tagged

        def table() -> Any:
            latest = api(
                base, "POST", "/artifacts/latest/filter", {"artifacts": {"key": {"any_": ["mailshot-sendings"]}}}
            )
            return latest and {row["id"]: row["status"] for row in json.loads(latest[0]["data"])}

        statuses = wait_for("the sendings table lists every sending", table, 30)
        assert set(statuses) == {str(r["id"]) for r in by_subject.values()}, statuses

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
        late = (when["started_at"] - when["start_at"]).total_seconds()
        print(
            f"sendings: scheduled {scheduled} (started {late:.1f} s after its start time, by the CLI's run), "
            f"{len(forms)} from the form, draft {draft_id} sent by control-mailshot: "
            f"{len(received)} messages; {len(scheduled_runs)} scheduled dispatch run(s); {time.monotonic() - t0:.0f} s"
        )
        print("schedule check: OK")
        ok = True
        return 0
    except Exception:
        procs.print_logs(4000)
        raise
    finally:
        procs.stop(grace=3)  # throw-away servers: no need to wait long for a clean shutdown
        stage("stopped")
        if ok:  # kept when the check failed, for its logs
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
