"""schemathesis against the served schema (the Done-when line of issue 15): every operation, its examples,
coverage, fuzzing and the stateful phase along the schema's links, authenticated with an admin key, every
check; on SQLite and PostgreSQL.  Any failure (a 5xx, an answer the schema does not declare, valid data
refused, invalid data accepted, an error that is not a problem...) fails the test with schemathesis's report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apisite import ApiSite, serve

pytestmark = pytest.mark.slow
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


@pytest.fixture
def api_site(db_url: str) -> Iterator[ApiSite]:
    with serve(db_url) as site:
        with site.client() as c:  # something for the operations on an address or a sending to find
            c.post("/subscribers", json={"email": "ann@example.org", "lists": ["news"], "force": True})
            c.post("/sendings", json={"subject": "Hello {{ nom }}", "html": "<p>Hi</p>", "lists": ["news"]})
        yield site


def test_schemathesis_finds_nothing(api_site: ApiSite, tmp_path: Path) -> None:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{api_site.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {api_site.keys['admin']}",
        "--max-examples",
        os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"),  # more for a deeper run by hand
        "--workers",
        "1",  # the machine is shared: one client at a time
        "--no-color",
        "--report-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    failures = done.stdout.find("FAILURES")  # the findings, not the tail of a long body
    assert done.returncode == 0, done.stdout[max(failures, 0) :][:20000] + done.stderr[-5000:]
