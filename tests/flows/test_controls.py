"""Prefect's controls mean what they say for the sending, through a real server (scripts/controls_check.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def _check(*args: str, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "controls_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    return done.stdout


@pytest.mark.slow
def test_cancel_suspend_resume_pause_draft_and_crash_under_mailshot_serve() -> None:
    """`mailshot serve`: Cancel pauses within 5 s and the dispatcher leaves it for 2 minutes; Suspend pauses,
    Resume sends everyone once; a paced pause silences the relay within 5 s; a draft gets nothing; a
    killed run's record is written by whoever finds it dead."""
    out = _check("--mode", "serve", "--window", "120", timeout=900)
    assert "controls check (serve): OK" in out


@pytest.mark.slow
def test_cancel_and_suspend_under_a_process_worker() -> None:
    """A process work pool with prefect.yaml's deployments: the same Cancel and Suspend/Resume hold."""
    out = _check("--mode", "worker", "--window", "30", timeout=600)
    assert "controls check (worker): OK" in out
