"""Prefect's controls mean what they say for the sending, through a real server (scripts/controls_check.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_prefect_controls_under_mailshot_serve_and_under_a_process_worker() -> None:
    """Under `mailshot serve`: Cancel pauses within 5 s and the dispatcher leaves it for 2 minutes; Suspend
    pauses, Resume sends everyone once; a paced pause silences the relay within 5 s; a draft gets nothing;
    a killed run's record is written by whoever finds it dead.  Under a process work pool with
    prefect.yaml's deployments: the same Cancel and Suspend/Resume.  The two set-ups run side by side
    (each its own server, relay and database): they mostly wait, and the suite stays short."""
    script = str(REPO / "scripts" / "controls_check.py")
    checks = {
        mode: subprocess.Popen(
            [sys.executable, script, "--mode", mode, "--window", window],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for mode, window in (("serve", "120"), ("worker", "30"))
    }
    for mode, proc in checks.items():
        out, err = proc.communicate(timeout=840)
        assert proc.returncode == 0 and f"controls check ({mode}): OK" in out, out + err[-6000:]
