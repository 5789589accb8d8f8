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


def test_prefect_yaml_declares_what_serve_serves() -> None:
    """prefect.yaml (work pools) is valid for `prefect deploy` and has the same deployments and schedules as serve."""
    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel

    from deployments.serve import deployments

    declared = PrefectYamlModel.model_validate(yaml.safe_load((REPO / "prefect.yaml").read_text()))
    flow_of = {
        "send_mailshot_fast": "send-mailshot",
        "send_mailshot": "send-mailshot",
        "send_mailshot_dask": "send-mailshot",
    }
    in_yaml = {
        (flow_of.get(d.entrypoint.rsplit(":", 1)[1], d.entrypoint.rsplit(":", 1)[1].replace("_", "-")), d.name): [
            s.cron for s in d.schedules or []
        ]
        for d in declared.deployments
    }
    served = {(d.flow_name, d.name): d for d in deployments()}
    assert set(in_yaml) == set(served)
    assert in_yaml[("dispatch-mailshots", "default")] == ["* * * * *"]
    assert in_yaml[("purge-stats", "daily")] == [served[("purge-stats", "daily")].schedules[0].schedule.cron]
    assert served[("dispatch-mailshots", "default")].schedules[0].schedule.interval.total_seconds() == 60
