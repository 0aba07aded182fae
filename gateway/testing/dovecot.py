"""A private Dovecot IMAP server for tests: its own directory, a spare port, plain logins.

::

    with PrivateDovecot(users={"support": "secret"}) as dovecot:
        with dovecot.client("support") as imap:        # an IMAPClient, logged in
            imap.append("INBOX", raw_bytes)
        config = dovecot.mailbox_toml("support", folder="INBOX")   # for [[adapters.imap.mailboxes]]

The system's Dovecot service is never touched: the server runs ``dovecot -c <conf> -F`` as a child
process and stops with SIGTERM. Two traps handled here (see ``shared/recipes.md``): the auth
process runs as ``dovecot`` and must read the users file, so the directory is created under
``/tmp`` with mode 0755 (pytest's ``tmp_path`` parents are 0700); and Dovecot refuses uid 0 for
mail, so mail belongs to ``nobody`` (65534) when the tests run as root.

:func:`require_dovecot` skips the calling test when Dovecot is not installed, or fails it when
``INTAKE_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from imapclient import IMAPClient

from gateway.testing.services import free_port, require_executable

MAIL_UID = 65534

_CONF = """\
instance_name = intake-test-dovecot-{port}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
mail_location = maildir:{d}/mail/%u
{passdb}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def require_dovecot() -> str:
    """The dovecot executable, or skip (fail in CI) when it is not installed."""
    return require_executable("dovecot", hint="apt-get install dovecot-imapd")


class PrivateDovecot:
    """One Dovecot instance for the duration of a test (or a benchmark)."""

    def __init__(self, *, users: dict[str, str] | None = None, port: int | None = None,
                 executable: str | None = None, any_user_password: str | None = None) -> None:
        """``users``: login → password. ``any_user_password``: instead, every login name is a
        user with this password (one server for many tests, each with its own mailbox)."""
        self.users = dict(users or {"support": "secret"})
        self.any_user_password = any_user_password
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.executable = executable or require_dovecot()
        self.root = Path(tempfile.mkdtemp(prefix="intake-dovecot-", dir="/tmp"))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateDovecot:
        """Write the config and users, start the server, return once it accepts connections."""
        d = self.root
        d.chmod(0o755)  # the auth process (user dovecot) reads the users file in here
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(exist_ok=True)
        uid, gid = (MAIL_UID, MAIL_UID) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
        if os.geteuid() == 0:
            os.chown(d / "mail", uid, gid)
        users = "".join(f"{name}:{password}\n" for name, password in self.users.items())
        (d / "users").write_text(users)
        (d / "users").chmod(0o644)
        conf = d / "dovecot.conf"
        if self.any_user_password is not None:
            passdb = f"passdb {{\n  driver = static\n  args = password={self.any_user_password}\n}}"
        else:
            passdb = ("passdb {\n  driver = passwd-file\n"
                      f"  args = scheme=PLAIN username_format=%u {d}/users\n}}")
        conf.write_text(_CONF.format(d=d, port=self.port, uid=uid, gid=gid, passdb=passdb))
        self._proc = subprocess.Popen([self.executable, "-c", str(conf), "-F"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"dovecot exited at start: {err.strip()} {self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen on {self.port} within 15 s: {self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; remove the directory."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateDovecot:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def restart(self) -> None:
        """Stop the server and start it again on the same port and directory (mail kept)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(10)
        self.start()

    @property
    def pid(self) -> int | None:
        """The master process (to pin it to a CPU in benchmarks, for example)."""
        return self._proc.pid if self._proc is not None else None

    def log(self) -> str:
        """The server's log (for assertion messages)."""
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self, user: str = "support") -> IMAPClient:
        """A logged-in IMAPClient (use it as a context manager to log out)."""
        imap = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        password = self.any_user_password or self.users[user]
        imap.login(user, password)
        return imap

    def mailbox_toml(self, user: str = "support", *, name: str | None = None,
                     folder: str = "INBOX", password_env: str = "",
                     extra: str = "") -> str:
        """An ``[[adapters.imap.mailboxes]]`` table for ``user`` (password via ``password_env``,
        which the caller sets to ``self.users[user]``)."""
        lines = ["[[adapters.imap.mailboxes]]",
                 f'name = "{name or user}"', f'host = "{self.host}"', f"port = {self.port}",
                 "ssl = false", f'username = "{user}"', f'folder = "{folder}"']
        if password_env:
            lines.append(f'password_env = "{password_env}"')
        return "\n".join(lines) + "\n" + extra
