"""Flow runs of an idle site (not a test): how many runs `mailshot serve`'s schedules make a day.

    .venv/bin/python bench/idle_runs.py --minutes 10

Starts a real `prefect server start` (on loopback, a fresh SQLite database) and `mailshot serve` over
an empty mailshot database, waits MINUTES, then asks the Prefect API:

- the runs that ran in the window [t0, t0 + MINUTES) (t0: the deployments are registered), by
  deployment, with their final states and every log line at WARNING or above;
- the runs the server's scheduler has planned for the next 24 hours, by deployment: the server is
  started with scheduler settings that make it plan a whole day ahead (by default it stops at 100
  runs per deployment), so this is the day's count as Prefect itself computes it from the schedules;
- the window's count extrapolated to a day (MINUTES x 1440 / MINUTES): a rough check only, since a
  10-minute window holds one dispatcher tick, and a 15-minute or hourly tick or not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from deployment_check import BIN, Processes, check_env, free_port, wait_http
from schedule_check import api

DAY = timedelta(days=1)


def _runs(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:  # the API answers at most 200 runs per call
        page: list[dict[str, Any]] = api(
            base, "POST", "/flow_runs/filter", {**body, "limit": 200, "offset": len(found)}
        )
        found += page
        if len(page) < 200:
            return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailshot-idle-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = check_env(
        work,
        port,
        PREFECT_UI_ENABLED="false",
        # Plan every run of the next day (defaults: at most 100 per deployment, at least one hour ahead).
        PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS="1000",
        PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME="PT25H",  # an ISO 8601 duration: seconds are refused
        # What the README tells operators to set: finished runs are deleted after 30 days.
        PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED="events,flow_runs",
        PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD=str(30 * 86400),
    )
    procs = Processes(env, work, work / "logs")
    start = procs.start

    try:
        start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        wait_http(f"{base}/health", 120)
        start("serve", [sys.executable, "-m", "mailshot_core.cli", "serve"])
        deadline = time.monotonic() + 120
        while len(api(base, "POST", "/deployments/filter", {})) < 10:
            if time.monotonic() > deadline:
                raise TimeoutError("mailshot serve did not register its deployments")
            time.sleep(1)
        t0 = datetime.now(UTC)
        t1 = t0 + timedelta(minutes=args.minutes)
        print(f"deployments registered at {t0:%H:%M:%S} UTC; idle for {args.minutes:g} minutes", flush=True)
        time.sleep(args.minutes * 60)
        time.sleep(20)  # runs due just before t1 finish (runner poll 10 s, process start ~3 s)

        deployments = {d["id"]: f"{d['name']}" for d in api(base, "POST", "/deployments/filter", {})}
        flows = {f["id"]: f["name"] for f in api(base, "POST", "/flows/filter", {})}
        window = {"expected_start_time": {"after_": t0.isoformat(), "before_": t1.isoformat()}}
        ran = [
            r
            for r in _runs(base, {"flow_runs": {**window, "state": {"type": {"not_any_": ["SCHEDULED"]}}}})
            if datetime.fromisoformat(r["expected_start_time"]) < t1  # `before_` includes t1
        ]

        def label(run: dict[str, Any]) -> str:
            return f"{flows.get(run['flow_id'], '?')}/{deployments.get(run['deployment_id'], 'no deployment')}"

        planned_window = {"expected_start_time": {"after_": t1.isoformat(), "before_": (t1 + DAY).isoformat()}}
        planned = [
            r
            for r in _runs(base, {"flow_runs": {**planned_window, "state": {"type": {"any_": ["SCHEDULED"]}}}})
            if datetime.fromisoformat(r["expected_start_time"]) < t1 + DAY
        ]
        warnings = api(
            base,
            "POST",
            "/logs/filter",
            {"logs": {"level": {"ge_": 30}, "flow_run_id": {"any_": [r["id"] for r in ran]}}, "limit": 200},
        )
        result = {
            "minutes": args.minutes,
            "ran_in_window": dict(Counter(label(r) for r in ran)),
            "states": dict(Counter(r["state_type"] for r in ran)),
            "warnings_or_errors_logged": len(warnings),
            "planned_next_24h": dict(Counter(label(r) for r in planned)),
            "per_day_planned": len(planned),
            "per_day_extrapolated": round(len(ran) * 1440 / args.minutes),
        }
        print(json.dumps(result, indent=2))
        print(
            f"idle: {len(ran)} flow run(s) in {args.minutes:g} min (~{result['per_day_extrapolated']}/day extrapolated); "
            f"the server plans {len(planned)} for the next 24 h; {len(warnings)} warning(s)"
        )
        return 0
    finally:
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
