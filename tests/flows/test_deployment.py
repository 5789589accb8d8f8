"""The deployment path: `prefect deployment run 'send-mailshot/now'` against a real server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_prefect_deployment_run_sends_a_mailshot() -> None:
    """A real `prefect server start` + `mailshot serve`: a deployment run sends every recipient."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "deployment_check.py")],
        capture_output=True,
        text=True,
        timeout=480,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    assert "deployment check: OK" in done.stdout
