"""The scheduled and operator deployments against a real `prefect server start` + `mailshot serve`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.postgres
def test_schedules_run_and_a_sending_created_from_the_form_goes_out(pg_server: object) -> None:
    """dispatch-mailshots starts a scheduled sending on its schedule; the create-and-send form sends one.

    Prefect's server runs on the session's PostgreSQL: a fresh SQLite server took ~23 s to answer here.
    """
    url = pg_server.create_database("prefect_schedules")  # type: ignore[attr-defined]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "schedule_check.py"), url.replace("+psycopg", "+asyncpg")],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    assert "schedule check: OK" in done.stdout
