"""Bulk subscribe through the Newsletter API vs `mailshot subscribers import` (not a test).

    .venv/bin/python bench/api_import.py [--count 100000]

Writes one CSV of COUNT addresses (email, nom, lang), then, each on a fresh SQLite database with the
list created first (not timed):
- ``mailshot subscribers import FILE --list news`` (the command's wall time: process start included);
- ``POST /api/v1/subscribers/import?list=news`` of the same file as ``text/csv``, and of the same rows as
  a JSON array, to ``mailshot web`` started as a process (the request's wall time, sent from here).
Prints each time, rate and ratio to the CLI (the issue's target: within 2x), and the server's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MAILSHOT = [sys.executable, "-m", "mailshot_core.cli"]


def _run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*MAILSHOT, *args], env=env, capture_output=True, text=True, check=True, timeout=600)
    return done.stdout


def _fresh(folder: Path, name: str) -> dict[str, str]:
    env = {**os.environ, "MAILSHOT_DATABASE_URL": f"sqlite:///{folder / name}.db"}
    _run(env, "lists", "create", "news")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_import(folder: Path, csv_file: Path) -> float:
    env = _fresh(folder, "cli")
    start = time.perf_counter()
    out = _run(env, "subscribers", "import", str(csv_file), "--list", "news")
    elapsed = time.perf_counter() - start
    print(f"  cli: {out.strip()}")
    return elapsed


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_import(folder: Path, name: str, body: bytes, content_type: str) -> float:
    env = _fresh(folder, name)
    key = _run(env, "api-keys", "create", "bench", "--scope", "subscribers").strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen([*MAILSHOT, "web", "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=600) as client:
            for _ in range(300):
                try:
                    client.get("/openapi.json")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            start = time.perf_counter()
            r = client.post(
                "/subscribers/import",
                params={"list": "news"},
                content=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
            )
            elapsed = time.perf_counter() - start
        r.raise_for_status()
        report = r.json()
        print(
            f"  api {name}: {report['new_subscriptions']} subscribed, {len(report['errors'])} invalid; "
            f"server's peak RSS {_peak_rss_mb(server.pid):.0f} MB"
        )
        return elapsed
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    count = parser.parse_args().count
    with tempfile.TemporaryDirectory(prefix="mailshot-api-import-") as tmp:
        folder = Path(tmp)
        rows = [{"email": f"reader{i}@example.com", "nom": f"Reader {i}", "lang": "fr"} for i in range(count)]
        csv_body = ("email,nom,lang\n" + "".join(f"{r['email']},{r['nom']},{r['lang']}\n" for r in rows)).encode()
        json_body = json.dumps(rows).encode()
        csv_file = folder / "addresses.csv"
        csv_file.write_bytes(csv_body)
        print(f"{count:,} addresses: CSV {len(csv_body) / 1e6:.1f} MB, JSON {len(json_body) / 1e6:.1f} MB")
        cli = cli_import(folder, csv_file)
        api_csv = api_import(folder, "csv", csv_body, "text/csv")
        api_json = api_import(folder, "json", json_body, "application/json")
    print(f"{'':18}{'seconds':>8}{'rows/s':>10}{'/ CLI':>8}")
    for label, seconds in (("mailshot import", cli), ("API, CSV body", api_csv), ("API, JSON body", api_json)):
        print(f"{label:18}{seconds:8.2f}{count / seconds:10,.0f}{seconds / cli:8.2f}")


if __name__ == "__main__":
    main()
