"""Materialising a large sending's recipients: time and peak memory (not a test).

    .venv/bin/python bench/materialise.py --count 1000000 [--database-url URL]

Fills a fresh database with COUNT subscribers on one list (set-based inserts, not timed),
then times `claims.materialise` (one INSERT .. SELECT) and the first claim of a batch,
and prints the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time

from sqlalchemy import text
from sqlalchemy.engine import Engine

from mailshot_core.audience import lists
from mailshot_core.config import load_settings
from mailshot_core.sending import claims, sendings
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import utcnow


def fill_subscribers(engine: Engine, count: int, list_name: str) -> None:
    """COUNT valid subscribers r<i>@example.com ("Reader i") on a new list, with set-based inserts."""
    with session_scope(engine) as session:
        mlist = lists.create_list(session, list_name)
        now = utcnow()
        chunk = 50_000
        for start in range(0, count, chunk):
            session.execute(
                text(
                    "INSERT INTO subscriber (email, nom, lang, status, created_at, updated_at) "
                    "VALUES (:e, :n, 'en', 'valid', :t, :t)"
                ),
                [
                    {"e": f"r{i}@example.com", "n": f"Reader {i}", "t": now}
                    for i in range(start, min(start + chunk, count))
                ],
            )
        session.execute(
            text(
                "INSERT INTO subscription (subscriber_id, list_id, status, created_at, updated_at) "
                "SELECT id, :l, 'valid', :t, :t FROM subscriber"
            ),
            {"l": mlist.id, "t": now},
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='mailshot-mat-')}/bench.db"
    settings = load_settings(database_url=url)
    engine = get_engine(url)
    started = time.perf_counter()
    fill_subscribers(engine, args.count, "big")
    print(f"setup: {args.count:,} subscribers in {time.perf_counter() - started:.1f} s", flush=True)
    with session_scope(engine) as session:
        m = sendings.create(
            session,
            settings,
            sendings.NewMailshot(subject="Hi", html="<p>Hi {{ nom }}</p>", lists=("big",), send_now=True),
        )
        mid = m.id
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    with session_scope(engine) as session:
        total = claims.materialise(session, sendings.get(session, mid))  # type: ignore[arg-type]
    materialise_s = time.perf_counter() - started
    started = time.perf_counter()
    with session_scope(engine) as session:
        claimed, _ = claims.claim(session, sendings.get(session, mid), "bench:1:x", 2000, utcnow())  # type: ignore[arg-type]
    claim_s = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"materialise {total:,} recipients: {materialise_s:.1f} s; first claim of {len(claimed)}: "
        f"{claim_s * 1000:.0f} ms; peak RSS {rss:.0f} MB (before materialising {rss_before:.0f} MB) [{url.split(':')[0]}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
