"""docs/operators.md, executed: its `sh` blocks run, its `toml` blocks pass check-config, its
`caddyfile` blocks pass `caddy validate`, and its `shell` blocks name only files that exist.

The guide's paths (/opt/intake-gateway, /etc/intake-gateway, ...) are mapped into a scratch
directory; everything else runs as written, from this checkout. The install block really
creates a virtual environment and installs deploy/requirements.lock into it (about a minute),
and every later block uses that installed program, so the guide is tested as an operator
follows it. Blocks marked ``needs=migrate`` / ``needs=purge`` skip, naming the command, while the
installed ``intake-gateway`` lacks it; ``needs=postgres`` skips while the build has no
PostgreSQL store.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import msgspec
import pytest

from gateway.testing.services import free_port, service_url
from intake_adapters.api import sign_request
from tests.caddy_validate import caddy_validate

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operators.md"
ROOTS = ("/opt/intake-gateway", "/etc/intake-gateway", "/var/lib/intake-gateway",
         "/var/backups/intake-gateway", "/etc/caddy")
GUIDE_DSN = "postgresql://intake@127.0.0.1:5432/intake"
SECRET_VALUES = {
    # Values of the shape each adapter checks at start; any other variable gets a random one.
    "TWILIO_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
    "TELEGRAM_BOT_TOKEN": "123456:ABCdefGhIJKlmNoPQRstuVWXyz012345678",
    "WECHAT_ENCODING_AES_KEY": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "INTAKE_WEBHOOK_REVIEWS_SECRET": "whsec_" + base64.b64encode(b"r" * 24).decode(),
}


@dataclass(frozen=True)
class Block:
    lang: str
    attrs: dict[str, str]
    text: str
    section: str

    @property
    def id(self) -> str:
        return self.attrs.get("id", "")


def guide_blocks() -> list[Block]:
    """Every fenced block of the guide, with its info-string attributes and its section."""
    blocks: list[Block] = []
    section = ""
    text = GUIDE.read_text()
    pattern = re.compile(r"^(#+ [^\n]*)$|^```(\w+)([^\n]*)\n(.*?)^```$", re.M | re.S)
    for m in pattern.finditer(text):
        if m.group(1):
            section = m.group(1).lstrip("# ").strip()
            continue
        attrs = dict(a.split("=", 1) for a in m.group(3).split())
        blocks.append(Block(m.group(2), attrs, m.group(4), section))
    return blocks


BLOCKS = guide_blocks()


def by_id(block_id: str) -> Block:
    return next(b for b in BLOCKS if b.id == block_id)


class Host:
    """The scratch machine: the guide's paths under ``base``, its installed program."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = self.path("/var/lib/intake-gateway")
        self.program = self.path("/opt/intake-gateway/bin/intake-gateway")
        self.dsn = GUIDE_DSN

    def path(self, guide_path: str) -> Path:
        return self.base / guide_path.lstrip("/")

    def localize(self, text: str) -> str:
        for root in ROOTS:
            text = text.replace(root, str(self.path(root)))
        return text.replace(GUIDE_DSN, self.dsn)

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        """Run an `sh` block with bash -e, from the checkout, as the guide shows it."""
        self.skip_unless_available(block)
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", self.localize(block.text)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"block {block.id} failed:\n{res.stdout}\n{res.stderr}"
        return res

    def commands(self) -> set[str]:
        out = subprocess.run([str(self.program), "--help"], capture_output=True, text=True,
                             timeout=60).stdout
        found = re.search(r"\{([a-z,-]+)\}", out)
        return set(found.group(1).split(",")) if found else set()

    def skip_unless_available(self, block: Block) -> None:
        need = block.attrs.get("needs")
        if need in ("migrate", "purge") and need not in self.commands():
            pytest.skip(f"needs `intake-gateway {need}`, which this build does not have yet")

    def environment(self) -> dict[str, str]:
        """The variables of /etc/intake-gateway/environment, as systemd would read them."""
        text = self.path("/etc/intake-gateway/environment").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def check_config(self, toml: str, tmp: Path) -> subprocess.CompletedProcess[str]:
        conf = tmp / f"{uuid.uuid4().hex}.toml"
        conf.write_text(self.localize(toml))
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
        for name in re.findall(r'_env\s*=\s*"([A-Z0-9_]+)"', toml):
            env[name] = SECRET_VALUES.get(name, secrets.token_urlsafe(16))
        env["INTAKE_POSTGRES_DSN"] = self.dsn
        return subprocess.run([str(self.program), "check-config", "--config", str(conf),
                               "--data-dir", str(tmp / "data")], capture_output=True,
                              text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    """The Install section, run: a virtual environment, the config, the secrets, the check."""
    machine = Host(tmp_path_factory.mktemp("host"))
    for block_id in ("install", "secrets", "check"):
        machine.run(by_id(block_id))
    assert machine.program.is_file()
    return machine


def test_install_leaves_a_checked_config_and_private_secrets(host: Host) -> None:
    environment = host.path("/etc/intake-gateway/environment")
    assert environment.stat().st_mode & 0o077 == 0, "the secrets file is readable by others"
    assert set(host.environment()) == {"INTAKE_API_SECRET", "INTAKE_EVENTS_TOKEN"}
    res = host.run(by_id("check"))
    assert "config OK" in res.stdout


@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if b.lang == "toml"])
def test_config_snippet_passes_check_config(host: Host, index: int, tmp_path: Path) -> None:
    block = BLOCKS[index]
    host.skip_unless_available(block)
    res = host.check_config(block.text, tmp_path)
    if block.attrs.get("needs") == "purge" and "retention" in res.stderr:
        pytest.skip("needs `[retention]` (intake-gateway purge), which this build lacks")
    if block.attrs.get("needs") == "postgres" and "is not available in this build" in res.stderr:
        pytest.skip("needs the PostgreSQL store, which this build does not have yet")
    assert res.returncode == 0, f"{block.section}:\n{block.text}\n{res.stderr}"


def test_tls_proxy_config_is_valid(host: Host, tmp_path: Path) -> None:
    caddy = next(b for b in BLOCKS if b.lang == "caddyfile")
    target = host.path(caddy.attrs["file"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(caddy.text)
    res = caddy_validate(target, tmp_path)
    assert res.returncode == 0, res.stderr
    gateway = next(b for b in BLOCKS if b.lang == "toml" and b.section == caddy.section)
    assert "public_url" in gateway.text  # the snippet checked by the test above


def _pg_database() -> Iterator[str]:
    """A database of its own on the test PostgreSQL, in place of the guide's DSN."""
    server = urlsplit(service_url("INTAKE_TEST_POSTGRES_DSN"))
    name = f"guide_{uuid.uuid4().hex[:12]}"
    admin = ["psql", "-h", server.hostname or "127.0.0.1", "-p", str(server.port or 5432),
             "-U", server.username or "postgres", "-d", "postgres", "-qc"]
    subprocess.run([*admin, f'CREATE DATABASE "{name}"'], check=True, timeout=60,
                   capture_output=True)
    try:
        yield server._replace(path=f"/{name}").geturl()
    finally:
        subprocess.run([*admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
                       timeout=60, capture_output=True)


def test_scale_out_backup_and_restore_postgres(host: Host) -> None:
    replica = next(b for b in BLOCKS if b.attrs.get("file", "").endswith("replica.toml"))
    for block_id in ("migrate", "pg-backup", "pg-restore"):
        host.skip_unless_available(by_id(block_id))
    databases = _pg_database()
    host.dsn = next(databases)
    try:
        target = host.path(replica.attrs["file"])
        target.write_text(host.localize(replica.text))
        host.run(by_id("migrate"))
        replica_file = replica.attrs["file"]
        gw = RunningGateway(host, replica_file)
        try:
            kept = gw.submit("before the database backup", b"kept in the database")
        finally:
            gw.stop()
        host.run(by_id("pg-backup"))
        assert host.path("/var/backups/intake-gateway/intake.pgdump").stat().st_size > 0
        # Files live in the database (as the guide says): the dump alone brings them back.
        shutil.rmtree(host.data / "attachments", ignore_errors=True)
        res = host.run(by_id("pg-restore"))
        assert "already current" in res.stdout
        host.run(by_id("upgrade-migrate"))
        gw = RunningGateway(host, replica_file)
        try:
            events = gw.get_json("/v1/events")["events"]
            created = next(e["event"] for e in events
                           if e["event"]["subject"] == kept["ticket_number"])
            uid = created["data"]["message"]["id"]
            sha = gw.get_json(f"/v1/messages/{uid}")["attachments"][0]["sha256"]
            assert gw.get(f"/v1/messages/{uid}/attachments/{sha}") == (
                200, b"kept in the database")
        finally:
            gw.stop()
    finally:
        host.dsn = GUIDE_DSN
        next(databases, None)


class RunningGateway:
    """The installed program serving the guide's config (what systemd would start)."""

    def __init__(self, host: Host, config: str = "/etc/intake-gateway/gateway.toml") -> None:
        self.host = host
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, **host.environment()}
        self.env = host.environment()
        self.proc = subprocess.Popen(
            [str(host.program), "serve", "--config",
             str(host.path(config)), "--data-dir", str(host.data),
             "--listen", self.url.removeprefix("http://")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            try:
                if self.request("/readyz")[0] == 200:
                    return
            except (URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.1)

    def request(self, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = Request(f"{self.url}{path}", data=body, headers=headers or {})
        try:
            with urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except HTTPError as exc:
            return exc.code, exc.read()

    def submit(self, text: str, attachment: bytes) -> dict[str, object]:
        body = msgspec.json.encode({
            "contact": {"email": "backup-test@example.org"}, "text": text,
            "attachments": [{"name": "a.txt", "content_type": "text/plain",
                             "data": base64.b64encode(attachment).decode()}]})
        ts = str(int(time.time()))
        status, answer = self.request("/v1/messages", body, {
            "Content-Type": "application/json", "X-Intake-Timestamp": ts,
            "X-Intake-Signature": sign_request(self.env["INTAKE_API_SECRET"], ts, body)})
        assert status == 201, answer
        return dict(msgspec.json.decode(answer))

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request(path, headers={
            "Authorization": f"Bearer {self.env['INTAKE_EVENTS_TOKEN']}"})

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, body
        return msgspec.json.decode(body)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def test_sqlite_backup_while_running_and_restore(host: Host) -> None:
    gw = RunningGateway(host)
    try:
        kept = gw.submit("before the backup", b"kept file")
        host.run(by_id("sqlite-backup"))
        lost = gw.submit("after the backup", b"lost file")
    finally:
        gw.stop()
    host.run(by_id("sqlite-restore"))
    gw = RunningGateway(host)
    try:
        events = gw.get_json("/v1/events")["events"]
        subjects = [e["event"]["subject"] for e in events if e["event"]["type"]
                    == "ticket.created"]
        assert kept["ticket_number"] in subjects
        assert lost["ticket_number"] not in subjects
        created = next(e["event"] for e in events
                       if e["event"]["subject"] == kept["ticket_number"])
        uid = created["data"]["message"]["id"]
        message = gw.get_json(f"/v1/messages/{uid}")
        sha = message["attachments"][0]["sha256"]
        assert gw.get(f"/v1/messages/{uid}/attachments/{sha}") == (200, b"kept file")
    finally:
        gw.stop()


def test_upgrade_in_place(host: Host) -> None:
    res = host.run(by_id("upgrade"))
    assert "config OK" in res.stdout


def test_purge(host: Host) -> None:
    res = host.run(by_id("purge"))
    assert "purged" in res.stdout


def test_every_sh_block_is_run_by_a_test() -> None:
    run = {"install", "secrets", "check", "migrate", "pg-backup", "pg-restore",
           "sqlite-backup", "sqlite-restore", "upgrade", "upgrade-migrate", "purge"}
    ids = [b.id for b in BLOCKS if b.lang == "sh"]
    assert all(ids), "every sh block needs an id= for the test that runs it"
    assert sorted(ids) == sorted(run)
    assert {b.lang for b in BLOCKS} <= {"sh", "shell", "toml", "caddyfile"}


def test_shell_blocks_need_a_host_and_name_only_existing_files() -> None:
    shell = [b for b in BLOCKS if b.lang == "shell"]
    assert shell
    for block in shell:
        # A block that runs without systemd, Docker or a cluster belongs in an `sh` block.
        assert re.search(r"(?m)^(systemctl|journalctl|docker|kubectl) ", block.text), block.text
        for path in re.findall(r"\b(deploy/[\w./-]+)", block.text):
            if path.endswith(("/.env", "/postgres_password")):
                continue  # the operator's copies, made by the same block
            assert (ROOT / path).exists(), path
