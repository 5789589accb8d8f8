"""Throughput benchmark, side by side in one run (not a test).

    .venv/bin/python bench/throughput.py --count 10000 [--count 100000] [--processes 2]

Against one local Postfix `smtp-sink` (C, accepts everything), measures in the same run:
  1. `smtp-source -s 10 -d`: Postfix's own C client, 10 sessions: the limit of this machine;
  2. a naive Python loop: Jinja2 + EmailMessage + smtplib, one connection: the floor;
  3. Mailshot: `mailshot send ID --fast` against a running `prefect server`, end to end
     (personalised ~10 KB messages, per-recipient ledger in SQLite, --connections SMTP
     connections per process), reporting the sending
     phase rate (from the sending's start/end times), the wall time of the command, and the
     peak RSS of its processes.
Installs Debian's postfix package when smtp-sink is missing (needs root).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from jinja2 import Template

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# About 10 KB once personalised: a realistic newsletter body.
PARAGRAPH = (
    "<p>Dear {{ nom }}, this week in the newsletter: our team visited twelve towns, met the people who "
    "make the local markets work, and came back with stories, recipes and a few photographs. "
    "Read on for the details, and write to us at any time.</p>\n"
)
# Six article links: what the click tracking rewrites when the sending is tracked.
LINKS = "".join(
    f'<p><a href="https://news.example.org/2026/11/article-{i}?utm_source=newsletter">Article {i}</a></p>\n'
    for i in range(6)
)
HTML = (
    "<html><body><h1>Hello {{ nom }}</h1>\n"
    + PARAGRAPH * 36
    + LINKS
    + ('<p><a href="{{ url_unsubscribe }}">Unsubscribe {{ email }}</a></p></body></html>\n')
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_smtp_sink() -> tuple[str, str]:
    sink, source = (
        shutil.which("smtp-sink") or "/usr/sbin/smtp-sink",
        shutil.which("smtp-source") or "/usr/sbin/smtp-source",
    )
    if not Path(sink).exists():
        print("installing postfix (for smtp-sink / smtp-source)...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env, stdout=subprocess.DEVNULL)
    return sink, source


def start_sink(sink: str, port: int) -> subprocess.Popen[bytes]:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sink, "-c", *user, f"127.0.0.1:{port}", "1024"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


def bench_smtp_source(source: str, port: int, count: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [source, "-s", "10", "-m", str(count), "-l", "10240", "-d", "-c", f"127.0.0.1:{port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return count / (time.perf_counter() - started)


def bench_naive(port: int, count: int) -> float:
    template = Template(HTML, autoescape=True)
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for i in range(count):
            msg = EmailMessage()
            msg["From"] = "news@example.org"
            msg["To"] = f"reader{i}@example.com"
            msg["Subject"] = f"Hello Reader {i}"
            html = template.render(nom=f"Reader {i}", email=f"reader{i}@example.com", url_unsubscribe="https://x/u/1")
            msg.set_content("text version")
            msg.add_alternative(html, subtype="html")
            smtp.send_message(msg)
    return count / (time.perf_counter() - started)


def mailshot_env(db: Path, port: int, connections: int, api_url: str) -> dict[str, str]:
    """The environment of the `mailshot` commands: SQLite ledger, the sink, a running Prefect server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSHOT_")}
    env.update(
        MAILSHOT_DATABASE_URL=f"sqlite:///{db}",
        MAILSHOT_SMTP_HOST="127.0.0.1",
        MAILSHOT_SMTP_PORT=str(port),
        MAILSHOT_SMTP_CONNECTIONS=str(connections),
        MAILSHOT_BATCH_SIZE="2000",
        PREFECT_API_URL=api_url,
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def create_newsletter(env: dict[str, str], work: Path, list_name: str) -> str:
    """`mailshot create` of the ~10 KB newsletter to one list; returns the sending's id."""
    (work / "body.html").write_text(HTML)
    out = subprocess.run(
        [
            str(BIN / "mailshot"),
            "create",
            "--subject",
            "Hello {{ nom }}",
            "--html",
            str(work / "body.html"),
            "--list",
            list_name,
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


_RUNS = itertools.count(1)


def bench_mailshot(
    port: int, count: int, processes: int, connections: int, work: Path, api_url: str, tracking: str = "smtp"
) -> dict[str, float]:
    env = mailshot_env(work / "bench.db", port, connections, api_url)
    env["MAILSHOT_TRACKING"] = tracking
    mailshot = [str(BIN / "mailshot")]
    name = f"l{count}-{tracking}-{next(_RUNS)}"  # a list per run: --count may repeat
    csv = work / f"subs-{count}.csv"
    csv.write_text("email,nom,lang\n" + "".join(f"reader{i}@example.com,Reader {i},en\n" for i in range(count)))
    subprocess.run([*mailshot, "lists", "create", name], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*mailshot, "subscribers", "import", str(csv), "--list", name],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    mid = create_newsletter(env, work, name)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    cmd = [*mailshot, "send", mid, "--no-progress", *(["--fast"] if processes > 1 else [])]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    status = json.loads(
        subprocess.run([*mailshot, "status", mid, "--json"], env=env, check=True, capture_output=True, text=True).stdout
    )
    assert status["sent"] == count, status
    import sqlite3

    con = sqlite3.connect(work / "bench.db")
    first, last = con.execute(
        "select min(last_attempt_at), max(sent_at) from recipient where mailshot_id = ?", (int(mid),)
    ).fetchone()
    con.close()
    from datetime import datetime

    phase = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return {"rate": count / phase, "wall_rate": count / wall, "wall": wall, "peak_rss_mb": max(peak, before) / 1024}


def start_prefect(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(240):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("prefect server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, action="append", help="recipients (repeatable); default 10000")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="1 = normal mode, >1 = --fast")
    parser.add_argument("--connections", type=int, default=16, help="SMTP connections per process")
    parser.add_argument("--naive-max", type=int, default=10000, help="cap the naive loop's message count")
    parser.add_argument(
        "--tracking",
        action="append",
        choices=["smtp", "off"],
        help="MAILSHOT_TRACKING of the sending (repeatable: side by side in one run); default smtp",
    )
    args = parser.parse_args()
    counts = args.count or [10000]
    sink, source = ensure_smtp_sink()
    work = Path(tempfile.mkdtemp(prefix="mailshot-bench-"))
    port = free_port()
    sink_proc = start_sink(sink, port)
    prefect_proc, api_url = start_prefect(work)
    try:
        print(f"machine: {os.cpu_count()} cores; sink: smtp-sink on 127.0.0.1:{port}")
        for count in counts:
            limit = bench_smtp_source(source, port, count)
            naive = bench_naive(port, min(count, args.naive_max))
            for tracking in args.tracking or ["smtp"]:
                ms = bench_mailshot(port, count, args.processes, args.connections, work, api_url, tracking)
                print(
                    f"N={count}: smtp-source {limit:,.0f} msg/s | naive loop {naive:,.0f} msg/s | "
                    f"mailshot ({'fast, ' + str(args.processes) + ' processes' if args.processes > 1 else 'normal'}, "
                    f"{args.connections} connections each, tracking {tracking}) "
                    f"{ms['rate']:,.0f} msg/s sending phase, {ms['wall_rate']:,.0f} msg/s wall "
                    f"({ms['wall']:.1f} s incl. start-up), peak RSS {ms['peak_rss_mb']:.0f} MB | "
                    f"mailshot/naive {ms['rate'] / naive:.2f}x, mailshot/limit {ms['rate'] / limit:.2f}x",
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
