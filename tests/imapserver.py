"""A throw-away Dovecot IMAP server (TLS) for the bounce-ingestion tests, modelled on pgserver.py.

Dovecot comes from Debian's packages (``apt-get install -y dovecot-imapd``; ``make system-deps``).
:class:`ImapServer` writes a minimal configuration in a temporary directory: implicit TLS (IMAPS)
on ``127.0.0.1`` on a free port with a self-signed certificate made for the occasion, one user in
a passwd-file, Maildir storage.  As root (CI), Dovecot runs its login and internal processes as the
package's ``dovenull``/``dovecot`` users and stores mail as ``nobody``; as another user, everything
runs as that user.  ``stop`` kills the server it started (by pid) and removes the directory.

This module does not import pytest.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from certs import self_signed
from helpers import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
HOST = "127.0.0.1"
USER = "bounces"
PASSWORD = "bounce-secret"


class ImapServerError(RuntimeError):
    """Dovecot is missing or did not start."""


class ImapServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailshot-dovecot-"))
        self.port = free_port(HOST)
        self.ca_file = self.dir / "cert.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> Path:
        root = os.geteuid() == 0
        me = pwd.getpwuid(os.geteuid()).pw_name
        mail_user = pwd.getpwnam("nobody") if root else pwd.getpwuid(os.geteuid())
        home = self.dir / "home"
        home.mkdir()
        os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
        self.dir.chmod(0o755)  # the mail user must reach its home below this directory
        (self.dir / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        users = "" if root else f"default_login_user = {me}\ndefault_internal_user = {me}\n"
        conf = self.dir / "dovecot.conf"
        conf.write_text(f"""\
base_dir = {self.dir}/run
state_dir = {self.dir}/state
instance_name = mailshot-test-{self.port}
log_path = {self.dir}/dovecot.log
protocols = imap
listen = {HOST}
{users}ssl = required
ssl_cert = <{self.dir}/cert.pem
ssl_key = <{self.dir}/key.pem
auth_mechanisms = plain
first_valid_uid = 1
last_valid_uid = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={home}
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
""")
        return conf

    def start(self, timeout: float = 20.0) -> None:
        if not os.access(DOVECOT, os.X_OK):
            raise ImapServerError("dovecot not found: install the Debian package dovecot-imapd (make system-deps)")
        self_signed(self.dir, "mailshot-test-imap")
        conf = self._config()
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise ImapServerError(f"dovecot exited with {self.proc.returncode}: {err}{self.log()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ImapServerError(f"dovecot did not listen on {HOST}:{self.port} within {timeout} s: {self.log()}")

    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ImapServer:
        self.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
