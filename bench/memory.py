"""A whole large sending, end to end: peak memory, time to the first message, sending rate (not a test).

    .venv/bin/python bench/memory.py --count 1000000 [--processes 2] [--connections 16]

Fills a fresh SQLite database with COUNT subscribers (set-based inserts), creates a sending of the
~10 KB newsletter of bench/throughput.py, then runs `mailshot send ID [--fast]` against a running
`prefect server` and a Postfix `smtp-sink`, sampling every 0.5 s the resident memory of the command
and all its child processes.  Reports the peak RSS of the largest process and of the whole process
tree, the delay from the command's start to the first message handed over, and the sending rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from materialise import fill_subscribers
from throughput import BIN, create_newsletter, ensure_smtp_sink, free_port, mailshot_env, start_prefect, start_sink

from mailshot_core.store.db import get_engine


def _tree_rss_mb(root: int) -> dict[int, float]:
    """RSS (MB) of ``root`` and every descendant, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    rss: dict[int, float] = {}
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="1 = normal mode, >1 = --fast")
    parser.add_argument("--connections", type=int, default=16, help="SMTP connections per process")
    args = parser.parse_args()
    sink, _ = ensure_smtp_sink()
    work = Path(tempfile.mkdtemp(prefix="mailshot-mem-"))
    port = free_port()
    sink_proc = start_sink(sink, port)
    prefect_proc, api_url = start_prefect(work)
    db = work / "bench.db"
    try:
        started = time.perf_counter()
        fill_subscribers(get_engine(f"sqlite:///{db}"), args.count, "big")
        print(f"setup: {args.count:,} subscribers in {time.perf_counter() - started:.0f} s", flush=True)
        env = mailshot_env(db, port, args.connections, api_url)
        mailshot = str(BIN / "mailshot")
        mid = create_newsletter(env, work, "big")
        peak_process, peak_tree = 0.0, 0.0
        cmd = [mailshot, "send", mid, "--no-progress", *(["--fast"] if args.processes > 1 else [])]
        launched = datetime.now(UTC).replace(tzinfo=None)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_process, peak_tree
            while not done.is_set():
                rss = _tree_rss_mb(proc.pid)
                if rss:
                    peak_process = max(peak_process, max(rss.values()))
                    peak_tree = max(peak_tree, sum(rss.values()))
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        if code != 0:
            raise RuntimeError(f"mailshot send exited with {code}")
        status = json.loads(
            subprocess.run(
                [mailshot, "status", mid, "--json"], env=env, check=True, capture_output=True, text=True
            ).stdout
        )
        con = sqlite3.connect(db)
        first, last = con.execute(
            "select min(last_attempt_at), max(sent_at) from recipient where mailshot_id = ?", (int(mid),)
        ).fetchone()
        con.close()
        # SQLite keeps UTC times without an offset.
        first_dt, last_dt = datetime.fromisoformat(first), datetime.fromisoformat(last)
        to_first = (first_dt - launched).total_seconds()
        phase = (last_dt - first_dt).total_seconds()
        print(
            f"N={args.count:,}: sent {status['sent']:,} / {status['total']:,} in {wall:.0f} s wall; "
            f"sending phase {args.count / phase:,.0f} msg/s; first message {to_first:.1f} s after `mailshot send`; "
            f"peak RSS: largest process {peak_process:.0f} MB, whole tree {peak_tree:.0f} MB "
            f"({'fast, ' + str(args.processes) + ' processes' if args.processes > 1 else 'normal'}, "
            f"{args.connections} connections each)",
            flush=True,
        )
    finally:
        sink_proc.terminate()
        os.killpg(prefect_proc.pid, signal.SIGTERM)
        prefect_proc.wait(20)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
