"""Claims hold across processes: several workers on one sending never share a recipient."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import pytest

from conftest import RelayProcess, engine_for, make_settings
from helpers import create, drive_in_process, recipients, seed
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailshotStatus


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_workers_send_each_recipient_once(
    db_url: str, tmp_path: Path, relay_process: RelayProcess, workers: int
) -> None:
    """N worker processes on the same sending: 0 duplicates, 0 missing, counters equal to a recount."""
    settings = make_settings(db_url, relay_process)
    engine = engine_for(settings)
    everyone = seed(engine, tmp_path, 1500)
    mid = create(engine, settings)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=drive_in_process, args=(db_url, relay_process.host, relay_process.port, mid, 50))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    received = Counter(
        line.split(b":", 1)[1].strip().decode()
        for data in relay_process.messages()
        for line in data.split(b"\r\n")
        if line.startswith(b"X-Mailshot-Recipient:")
    )
    assert [rid for rid, n in received.items() if n > 1] == []
    assert len(received) == 1500
    rows = recipients(engine, mid)
    assert set(rows) == set(everyone) and {s for s, _ in rows.values()} == {"sent"}
    with session_scope(engine) as session:
        m = sendings.get(session, mid)
        assert m.status == MailshotStatus.END
        assert sendings.stored_counters(m) == sendings.recount(session, mid)
