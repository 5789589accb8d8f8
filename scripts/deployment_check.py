"""End-to-end check of the deployment path, as an operator would run it.

Starts a real `prefect server start`, a local relay, `mailshot serve`, creates a
sending with the CLI, then runs

    prefect deployment run 'send-mailshot/now' --param mailshot_id=N --watch

and checks that every recipient received the message.  Everything runs on
loopback in a temporary directory and is stopped at the end.  Used by
tests/flows/test_deployment.py; run it by hand with `.venv/bin/python scripts/deployment_check.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
RECIPIENTS = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check_env(work: Path, api_port: int, **settings: str) -> dict[str, str]:
    """A check's environment: ours without any MAILSHOT_/PREFECT_ setting of the caller's, a Prefect home
    and a mailshot database in ``work``, the server on ``api_port``; ``settings`` added or overriding."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSHOT_", "PREFECT_"))}
    env.update(
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{api_port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MAILSHOT_DATABASE_URL=f"sqlite:///{work}/mailshot.db",
    )
    env.update(settings)
    return env


class Processes:
    """The background processes of a check (servers, relay, `mailshot serve`): each in its own session,
    so stopping one stops its children, with its output in ``logs/<name>.log``."""

    def __init__(self, env: dict[str, str], cwd: Path, logs: Path) -> None:
        self.env, self.cwd, self.logs = env, cwd, logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.procs.append(
            subprocess.Popen(
                cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def print_logs(self, tail: int = 3000) -> None:
        for log_file in sorted(self.logs.iterdir()):
            print(f"--- {log_file.name} (tail)\n{log_file.read_text(errors='replace')[-tail:]}", file=sys.stderr)

    def stop(self, grace: float = 15) -> None:
        """SIGTERM to every process group, then SIGKILL to those still there after ``grace`` seconds."""
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mailshot-deploy-"))
    api_port, relay_port = free_port(), free_port()
    env = check_env(work, api_port, MAILSHOT_SMTP_PORT=str(relay_port), MAILSHOT_SMTP_HOST="127.0.0.1")
    procs = Processes(env, work, work / "logs")
    start = procs.start

    try:
        start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(api_port)])
        start(
            "relay",
            [
                sys.executable,
                "-m",
                "mailshot_core.devtools.relay",
                "--port",
                str(relay_port),
                "--out-dir",
                str(work / "out"),
            ],
        )
        wait_http(f"http://127.0.0.1:{api_port}/api/health", 90)
        mailshot = [sys.executable, "-m", "mailshot_core.cli"]
        run([*mailshot, "lists", "create", "news"], env, work)
        (work / "subs.csv").write_text("email,nom\n" + "".join(f"d{i}@example.com,D {i}\n" for i in range(RECIPIENTS)))
        run([*mailshot, "subscribers", "import", "subs.csv", "--list", "news"], env, work)
        (work / "body.html").write_text("<p>Hello {{ nom }}</p>")
        mid = (
            run([*mailshot, "create", "--subject", "Deployed", "--html", "body.html", "--list", "news"], env, work)
            .strip()
            .splitlines()[-1]
        )
        start("serve", [*mailshot, "serve"])
        deadline = time.monotonic() + 90
        while "send-mailshot" not in run([str(BIN / "prefect"), "deployment", "ls"], env, work):
            if time.monotonic() > deadline:
                raise TimeoutError("mailshot serve did not register its deployments")
            time.sleep(1)
        print(f"running: prefect deployment run 'send-mailshot/now' --param mailshot_id={mid} --watch")
        run(
            [
                str(BIN / "prefect"),
                "deployment",
                "run",
                "send-mailshot/now",
                "--param",
                f"mailshot_id={mid}",
                "--watch",
                "--watch-timeout",
                "180",
            ],
            env,
            work,
            timeout=240,
        )
        status = json.loads(run([*mailshot, "status", mid, "--json"], env, work))
        received = len(list((work / "out").glob("*.eml")))
        print(
            f"sending {mid}: status {status['status']}, sent {status['sent']}/{status['total']}, "
            f"relay received {received}"
        )
        ok = status["status"] == "end" and status["sent"] == RECIPIENTS == received
        print("deployment check:", "OK" if ok else "FAILED")
        return 0 if ok else 1
    except Exception:
        procs.print_logs()
        raise
    finally:
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
