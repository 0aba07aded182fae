"""A newcomer's first ten minutes: `make run` on a bare Python, the example config, a taken
port, the URLs printed once listening, and what `/` answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.landing import landing_routes
from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent
REAL_PYTHON = os.path.realpath(sys.base_prefix + "/bin/python3")
if not os.path.exists(REAL_PYTHON):
    REAL_PYTHON = shutil.which("python3") or sys.executable


def _setuptools_only_lock() -> str:
    """The lock's own setuptools pin, with its hashes: a one-package install for the test."""
    text = (ROOT / "requirements.lock").read_text()
    start = text.index("\nsetuptools==") + 1
    end = text.index("\n", text.index("--hash", start))
    while text[end + 1:].startswith("    --hash"):
        end = text.index("\n", end + 1)
    return text[start:end + 1]


def _copy_of_the_build(tmp_path: Path, *, lock: str | None = None) -> Path:
    """The files `make` reads, in a fresh directory (the clone a newcomer has)."""
    tree = tmp_path / "clone"
    tree.mkdir()
    shutil.copy(ROOT / "Makefile", tree)
    shutil.copytree(ROOT / "scripts", tree / "scripts")
    if lock is None:
        shutil.copy(ROOT / "requirements.lock", tree)
        shutil.copy(ROOT / "pyproject.toml", tree)
    else:
        (tree / "requirements.lock").write_text(lock)
        # A project with nothing to build: the editable install needs only setuptools, so
        # the test installs one package instead of the whole lock.
        (tree / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            '[project]\nname = "probe"\nversion = "0"\n[tool.setuptools]\npy-modules = []\n')
    return tree


def _python_without_venv(tmp_path: Path) -> Path:
    """A python3 like Debian's without python3-venv: ``venv`` imports, ``ensurepip`` does not."""
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'ensurepip\'", name="ensurepip")\n')
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={shadow.parent} exec {REAL_PYTHON} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _half_made_venv(tree: Path) -> None:
    """What `python3 -m venv` leaves when ensurepip is missing: a python, no pip."""
    venv = tree / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(REAL_PYTHON).parent}\n"
                                     "include-system-site-packages = false\n")
    (venv / "bin" / "python").symlink_to(REAL_PYTHON)


def _make(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "VIRTUAL_ENV"))}
    return subprocess.run(["make", "--no-print-directory", "-C", str(tree), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _our_lines(stderr: str) -> list[str]:
    """What the build script said (make's own "*** Error" trailer aside)."""
    return [line for line in stderr.splitlines() if line and "***" not in line]


def test_python_without_venv_is_told_what_to_install_in_one_line(tmp_path: Path) -> None:
    tree = _copy_of_the_build(tmp_path)
    _half_made_venv(tree)
    res = _make(tree, "run", f"PYTHON={_python_without_venv(tmp_path)}")
    assert res.returncode != 0
    lines = _our_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert "apt install python3-venv" in lines[0]
    assert "No module named pip" not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_half_made_venv_is_made_again(tmp_path: Path) -> None:
    tree = _copy_of_the_build(tmp_path, lock=_setuptools_only_lock())
    _half_made_venv(tree)
    res = _make(tree, ".venv/.installed", f"PYTHON={REAL_PYTHON}")
    assert res.returncode == 0, res.stderr
    assert "half-made" in res.stderr
    # Progress, one step per pinned package, instead of a silent minute.
    assert "installing 1 pinned packages" in res.stderr and "[1/1] setuptools" in res.stderr
    pip = subprocess.run([str(tree / ".venv/bin/python"), "-m", "pip", "--version"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert (tree / ".venv/.installed").exists()
    # A second run finds the venv whole and says nothing about repairing it.
    (tree / ".venv/.installed").unlink()
    again = _make(tree, ".venv/.installed", f"PYTHON={REAL_PYTHON}")
    assert again.returncode == 0 and "half-made" not in again.stderr, again.stderr


def test_a_directory_that_is_not_a_venv_is_never_deleted(tmp_path: Path) -> None:
    tree = _copy_of_the_build(tmp_path, lock="# nothing pinned\n")
    (tree / ".venv").mkdir()
    (tree / ".venv" / "notes.txt").write_text("mine")
    res = _make(tree, ".venv/.installed", f"PYTHON={REAL_PYTHON}")
    assert res.returncode != 0
    assert (tree / ".venv" / "notes.txt").read_text() == "mine"
    assert "not a virtual environment" in res.stderr


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})}, cwd=ROOT)


def test_example_config_validates_as_shipped(tmp_path: Path) -> None:
    res = cli("check-config", "--config", "deploy/gateway.example.toml",
              "--data-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stdout
    # The two secrets it names are reported as steps still to do, not as a broken file.
    assert "to set before serve: $INTAKE_EVENTS_TOKEN" in res.stdout
    assert "to set before serve: $INTAKE_API_SECRET" in res.stdout
    with_them = cli("check-config", "--config", "deploy/gateway.example.toml", "--data-dir",
                    str(tmp_path), env={"INTAKE_EVENTS_TOKEN": "t0ken", "INTAKE_API_SECRET": "s3c"})
    assert with_them.returncode == 0 and "to set" not in with_them.stdout


def test_serve_still_refuses_to_start_without_the_secret(tmp_path: Path) -> None:
    res = cli("serve", "--config", "deploy/gateway.example.toml", "--data-dir", str(tmp_path),
              "--listen", "127.0.0.1:1")
    assert res.returncode == 2
    assert "INTAKE_EVENTS_TOKEN" in res.stderr or "INTAKE_API_SECRET" in res.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _disabled_mail(tmp_path: Path) -> Path:
    conf = tmp_path / "g.toml"
    conf.write_text("[adapters.smtp]\nenabled = false\n")
    return conf


def test_a_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = cli("serve", "--config", str(_disabled_mail(tmp_path)), "--data-dir",
                  str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    line = [ln for ln in res.stderr.splitlines() if "already in use" in ln]
    assert len(line) == 1 and f"127.0.0.1:{port}" in line[0], res.stderr
    assert f"--listen 127.0.0.1:{port + 1}" in line[0]


def test_serve_prints_the_urls_that_matter_once_listening(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(_disabled_mail(tmp_path)),
         "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line.rstrip())
            if "Ctrl-C" in line:
                break
        text = "\n".join(seen)
        base = f"http://127.0.0.1:{port}"
        assert f"intake-gateway is listening on {base}" in text, text
        assert f"web form   {base}/form" in text
        assert f"dashboard  {base}/dashboard" in text
        assert f"{base}/metrics" in text
        assert f"{base}/readyz" in text
    finally:
        proc.terminate()
        proc.wait(30)


async def test_root_on_loopback_lists_the_pages(make_gateway: MakeGateway,
                                                http: aiohttp.ClientSession) -> None:
    gw = await make_gateway()
    async with http.get(f"{gw.url}/") as resp:
        assert resp.status == 200
        page = await resp.text()
    assert 'href="/form"' in page and 'href="/metrics"' in page and 'href="/dashboard"' in page
    # Every link it shows answers (none leads to a 404).
    for path in ("/form", "/metrics", "/readyz", "/dashboard"):
        async with http.get(f"{gw.url}{path}") as resp:
            assert resp.status == 200, path


@pytest.mark.parametrize("form_path, status", [("/form", 302), (None, 404)])
async def test_root_off_loopback_sends_customers_to_the_form(
        form_path: str | None, status: int) -> None:
    app = web.Application()
    app.router.add_routes(landing_routes(loopback=False, form_path=form_path))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/", allow_redirects=False) as resp:
            assert resp.status == status
            if form_path:
                assert resp.headers["Location"] == "/form"
                assert "metrics" not in await resp.text()
    finally:
        await runner.cleanup()
