"""Time to the first message, default path vs served path, whole-run rate and memory (not a test).

    .venv/bin/python bench/first_message.py [--case sqlite-100k-served --case sqlite-100k-default
                                              --case sqlite-1m-served --case pg-100k-served]

Side by side in one run, against one Postfix `smtp-sink`: first `smtp-source` (the machine's limit,
as in bench/throughput.py), then for each case a fresh database of N subscribers (set-based inserts,
bench/materialise.py), a sending of the ~10 KB newsletter, and `mailshot send ID --fast`:

- *served*: against a `prefect server` started beforehand (``PREFECT_API_URL`` set);
- *default*: no ``PREFECT_API_URL`` (a user right after the README's install, or CI); the command
  starts its own ephemeral server (flows/ephemeral.py).  Its PREFECT_HOME is warmed by a first small
  sending, as any later run finds it.

Reports, per case: the delay from the command's start to the first message the relay accepted (the
first recipient's ``sent_at``, written when the relay's 250 reply arrives), the wall time and rate end
to end, the sending phase's rate (first attempt to last acceptance), its ratio to `smtp-source`, the
peak RSS of the largest Mailshot process (the flow's and its workers'), and how many Prefect server
processes (uvicorn) the command ran, with their own peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from materialise import fill_subscribers
from memory import _tree_rss_mb
from sqlalchemy import text
from throughput import (
    BIN,
    bench_smtp_source,
    create_newsletter,
    ensure_smtp_sink,
    free_port,
    mailshot_env,
    start_prefect,
    start_sink,
)

from mailshot_core.store.db import dispose_engines, get_engine

CASES = ("sqlite-100k-served", "sqlite-100k-default", "sqlite-1m-served", "pg-100k-served")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _send(env: dict[str, str], mid: str) -> dict[str, float]:
    """`mailshot send MID --fast`, sampled every 0.2 s: wall, launch time, peak RSS, servers seen."""
    launched = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "mailshot"), "send", mid, "--fast", "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak: dict[int, float] = {}
    servers: set[int] = set()  # Prefect's uvicorn: reported apart from Mailshot's own processes
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid, rss in _tree_rss_mb(proc.pid).items():
                peak[pid] = max(peak.get(pid, 0.0), rss)
                if pid not in servers and "uvicorn" in _cmdline(pid):
                    servers.add(pid)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"mailshot send exited with {proc.returncode}: {stderr.decode()[-2000:]}")
    return {
        "wall": wall,
        "launched": launched,
        "peak_rss_mb": max((rss for pid, rss in peak.items() if pid not in servers), default=0.0),
        "server_rss_mb": max((rss for pid, rss in peak.items() if pid in servers), default=0.0),
        "servers": float(len(servers)),
    }


def run_case(
    case: str, url: str, count: int, port: int, api_url: str | None, work: Path, connections: int = 32
) -> dict[str, float]:
    env = mailshot_env(work / "unused.db", port, connections, api_url or "")
    env["MAILSHOT_DATABASE_URL"] = url
    if api_url is None:
        del env["PREFECT_API_URL"]
        env["PREFECT_HOME"] = str(work / "prefect-default")
    engine = get_engine(url)
    list_name = case.replace("-", "_")
    fill_subscribers(engine, count, list_name)
    mid = create_newsletter(env, work, list_name)
    run = _send(env, mid)
    with engine.connect() as conn:
        sent, first_sent, first_attempt, last_sent = conn.execute(
            text(
                "SELECT count(sent_at), min(sent_at), min(last_attempt_at), max(sent_at) "
                "FROM recipient WHERE mailshot_id = :m AND status = 'sent'"
            ),
            {"m": int(mid)},
        ).one()
    dispose_engines()
    assert sent == count, f"{case}: {sent} sent of {count}"

    def ts(value: datetime | str) -> float:  # aware on PostgreSQL, UTC text on SQLite
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()

    return {
        "first": ts(first_sent) - run["launched"],
        "wall_rate": count / run["wall"],
        "wall": run["wall"],
        "phase_rate": count / (ts(last_sent) - ts(first_attempt)),
        "peak_rss_mb": run["peak_rss_mb"],
        "server_rss_mb": run["server_rss_mb"],
        "servers": run["servers"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=CASES, help="repeatable; default: all four")
    parser.add_argument("--source-count", type=int, default=100_000, help="messages for smtp-source")
    parser.add_argument("--connections", type=int, default=32, help="MAILSHOT_SMTP_CONNECTIONS (per process)")
    args = parser.parse_args()
    cases = args.case or list(CASES)
    sink, source = ensure_smtp_sink()
    work = Path(tempfile.mkdtemp(prefix="mailshot-first-"))
    port = free_port()
    sink_proc = start_sink(sink, port)
    prefect_proc, api_url = start_prefect(work)
    pg = None
    try:
        if any(c.startswith("pg-") for c in cases):
            from pgserver import PgServer

            pg = PgServer().start()
        if any(c.endswith("-default") for c in cases):  # a first run fills the default path's PREFECT_HOME
            run_case("warm-up", f"sqlite:///{work}/warm.db", 100, port, None, work)
        limit = bench_smtp_source(source, port, args.source_count)
        print(f"machine: {os.cpu_count()} cores; smtp-source {limit:,.0f} msg/s ({args.source_count:,} x 10 KB)")
        for n, case in enumerate(cases):
            kind, size, path = case.split("-")
            count = {"100k": 100_000, "1m": 1_000_000}[size]
            url = pg.create_database(f"first{n}") if kind == "pg" and pg else f"sqlite:///{work}/case{n}.db"
            r = run_case(case, url, count, port, api_url if path == "served" else None, work, args.connections)
            print(
                f"{case}: first message {r['first']:.2f} s | end to end {r['wall_rate']:,.0f} msg/s "
                f"({r['wall']:.1f} s) | sending phase {r['phase_rate']:,.0f} msg/s = "
                f"{r['phase_rate'] / limit:.2f}x smtp-source | end to end / phase "
                f"{r['wall_rate'] / r['phase_rate']:.2f} | peak RSS {r['peak_rss_mb']:.0f} MB (largest Mailshot process) | "
                f"Prefect servers started by the command: {r['servers']:.0f}"
                + (f" (peak RSS {r['server_rss_mb']:.0f} MB)" if r["servers"] else ""),
                flush=True,
            )
    finally:
        sink_proc.terminate()
        os.killpg(prefect_proc.pid, signal.SIGTERM)
        prefect_proc.wait(20)
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
