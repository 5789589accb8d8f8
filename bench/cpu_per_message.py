"""CPU per message of the sending processes, without Prefect (not a test): where the sending phase's time goes.

    .venv/bin/python bench/cpu_per_message.py [--count 20000] [--connections 32] [--processes 1]
                                              [--profile out.txt] [--source-count 60000] [--jinja]

PROCESSES processes (forked, default 1: this one) send COUNT personalised ~10 KB messages
(bench/throughput.py's newsletter) of one fresh SQLite sending to a local Postfix `smtp-sink`, batch
after batch as fast mode's workers do (pipeline.send_batches).  Reports their CPU (user + system,
``os.times``, children included) per message and the wall rate.  ``--profile FILE``: py-spy samples
them meanwhile and writes its raw (collapsed stacks) output to FILE.  On a 2-core machine the sink
shares the cores: compare the CPU per message, not the wall rate, between runs.  ``--source-count N``:
first `smtp-source` (10 sessions, N ~10 KB messages) against the same sink, for the ratio in one run.
``--jinja``: a template with a condition and a filter, which Jinja2 renders for every message.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from materialise import fill_subscribers
from throughput import HTML, bench_smtp_source, ensure_smtp_sink, free_port, start_sink

from mailshot_core.config import Settings, load_settings
from mailshot_core.sending import claims, pipeline, sendings
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import MailshotStatus

# No skeleton (render.Skeleton): the whole template goes through Jinja2 for every message.
JINJA_TITLE = "<h1>{% if nom %}Hello {{ nom|title }}{% endif %}</h1>"


def _worker(url: str, settings: Settings, mid: int) -> int:
    return pipeline.send_batches(get_engine(url), settings, mid).sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=1, help="worker processes sending the same sending")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy's flame data into this file")
    parser.add_argument("--source-count", type=int, default=0, help="first, smtp-source with this many messages")
    parser.add_argument(
        "--jinja", action="store_true", help="a template Jinja2 renders per message (a condition and a filter)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailshot-cpu-"))
    sink, source = ensure_smtp_sink()
    port = free_port()
    sink_proc = start_sink(sink, port)
    limit = bench_smtp_source(source, port, args.source_count) if args.source_count else None
    url = f"sqlite:///{work / 'bench.db'}"
    settings = load_settings(
        database_url=url,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_connections=args.connections,
        batch_size=args.batch,
    )
    engine = get_engine(url)
    fill_subscribers(engine, args.count, "cpu")
    html = HTML.replace("<h1>Hello {{ nom }}</h1>", JINJA_TITLE) if args.jinja else HTML
    with session_scope(engine) as session:
        m = sendings.create(
            session, settings, sendings.NewMailshot(subject="Hello {{ nom }}", html=html, lists=("cpu",), send_now=True)
        )
        mid = m.id
        assert mid is not None
        sendings.set_status(session, m, MailshotStatus.PROCESSING)
        claims.materialise(session, m)
    spy = None
    if args.profile is not None:
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--subprocesses",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(args.profile),
                "-p",
                str(os.getpid()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    before, wall = os.times(), time.perf_counter()
    if args.processes == 1:
        sent = pipeline.send_batches(engine, settings, mid).sent
    else:
        engine.dispose()
        with multiprocessing.get_context("fork").Pool(args.processes) as pool:
            sent = sum(pool.starmap(_worker, [(url, settings, mid)] * args.processes))
    after, wall = os.times(), time.perf_counter() - wall
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy.wait()
    sink_proc.terminate()
    shutil.rmtree(work, ignore_errors=True)
    user = after.user - before.user + after.children_user - before.children_user
    system = after.system - before.system + after.children_system - before.children_system
    print(
        f"{sent:,} sent by {args.processes} process(es) x {args.connections} connections: "
        f"{(user + system) / sent * 1000:.3f} ms CPU per message (user {user / sent * 1000:.3f}, system "
        f"{system / sent * 1000:.3f}); wall {sent / wall:,.0f} msg/s"
        + (" (Jinja2 template)" if args.jinja else "")
        + (f"; smtp-source just before: {limit:,.0f} msg/s ({sent / wall / limit:.2f}x)" if limit else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
