"""Shared fixtures: databases (SQLite, PostgreSQL), the test relay, Prefect's test harness.

Prefect settings are set before anything imports prefect (reference/prefect.md §12):
a private PREFECT_HOME, analytics off, the task-run recorder tuned so a small flow
test costs ~0.3 s instead of ~1.2 s.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_prefect_home = tempfile.mkdtemp(prefix="mailshot-prefect-")
os.environ.setdefault("PREFECT_HOME", _prefect_home)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] = "200"
os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE"] = "200"
os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"] = "0.5"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
# The tests must not read a developer's .env or MAILSHOT_* environment.
for _name in [n for n in os.environ if n.startswith("MAILSHOT_") and n != "MAILSHOT_TEST_PG_URL"]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from helpers import TEST_KEY  # noqa: E402
from mailshot_core.config import Settings, load_settings  # noqa: E402
from mailshot_core.devtools.relay import DevRelay, FaultPlan  # noqa: E402
from mailshot_core.store import db  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own directory: no stray .env or SQLite file is shared."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    from pgserver import PgServer, PgServerError

    server = PgServer()
    try:
        server.start()
    except PgServerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield server
    server.stop()


BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _database(request: pytest.FixtureRequest, folder: Path) -> str:
    """A new database of the fixture's parameter: an SQLite file in ``folder``, or one on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{folder}/mailshot.db"
    return str(request.getfixturevalue("pg_server").create_database())


@pytest.fixture(params=BOTH_DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite and on PostgreSQL (DESIGN §6: CI runs both)."""
    yield _database(request, tmp_path)
    db.dispose_engines()


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database per module (SQLite, then PostgreSQL), for the modules sharing a costly site."""
    yield _database(request, tmp_path_factory.mktemp("module-db"))
    db.dispose_engines()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/mailshot.db"
    db.dispose_engines()


@pytest.fixture
def relay() -> Iterator[DevRelay]:
    with DevRelay(faults=FaultPlan()) as r:
        yield r


class RelayProcess:
    """The dev relay in its own process (the second core), writing each message to out_dir."""

    def __init__(self, out_dir: Path, *extra: str) -> None:
        import re
        import subprocess

        self.out_dir = out_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailshot_core.devtools.relay", "--port", "0", "--out-dir", str(out_dir), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on ([\d.]+):(\d+)", line)
        assert match, f"relay did not start: {line!r}"
        self.host, self.port = match[1], int(match[2])

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.out_dir.glob("*.eml"), key=lambda p: int(p.stem))]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[RelayProcess]:
    r = RelayProcess(tmp_path / "relay-out")
    yield r
    r.stop()


def make_settings(url: str, relay: DevRelay | RelayProcess | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": url,
        "retry_delay": 0,
        "from_email": "news@example.org",
        "base_url": "https://news.example.org",
        "secret_key": TEST_KEY,
    }
    if relay is not None:
        values["smtp_host"] = relay.host
        values["smtp_port"] = relay.port
    values.update(overrides)
    return load_settings(**values)


def engine_for(settings: Settings) -> Engine:
    return db.get_engine(settings.database_url)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (~8 s), heartbeat off."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session")
def send_now_deployment(prefect_harness: None) -> str:
    """`send-mailshot/now` registered on the test server, so flows can create its runs (nothing runs
    them here: they stay Scheduled, which is what the dispatcher and the operator flows look at)."""
    from flows.send_mailshot import send_mailshot
    from flows.sending_runs import SEND_NOW

    send_mailshot.to_deployment(name=SEND_NOW.split("/")[1]).apply()
    return SEND_NOW


def runs_tagged(mailshot_id: int, since: datetime) -> list[Any]:
    """The flow runs of the test server tagged ``mailshot:<id>`` created since ``since`` (ids restart at 1
    in each test's database, the test server is the session's), by expected start time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"mailshot:{mailshot_id}"])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
    return [run for run in found if run.created is not None and run.created >= since]


@pytest.fixture
def test_start() -> datetime:
    """When the test started: what it finds on the session's Prefect server after this is its own."""
    return datetime.now(UTC)
