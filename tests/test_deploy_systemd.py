"""deploy/intake-gateway.service through ``systemd-analyze verify`` and ``security --offline``.

``verify`` checks that every command exists, so the unit is verified with its
``/opt/intake-gateway`` paths pointed at this checkout's installed console script (the same
program the unit runs once installed); everything else is the file as shipped.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing.services import require_executable
from tests.deploy_files import DEPLOY

UNIT = DEPLOY / "intake-gateway.service"
INSTALLED = "/opt/intake-gateway/bin/intake-gateway"
MAX_EXPOSURE = 2.0
"""``systemd-analyze security`` rates 0 (locked down) to 10 (unprotected); 'OK' is below 4."""


def _analyze() -> str:
    return require_executable("systemd-analyze", hint="Debian package systemd; .ci/run "
                              "installs it")


def _as_installed_here(tmp_path: Path) -> Path:
    script = Path(sys.executable).with_name("intake-gateway")
    assert script.is_file(), "the console script is not installed in this environment"
    text = UNIT.read_text()
    assert INSTALLED in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED, str(script)))
    return copy


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_analyze(), "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)


def test_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    res = _verify(_as_installed_here(tmp_path))
    # verify exits 0 on unknown keys and bad values too, warning on stderr: none is allowed.
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    unit = _as_installed_here(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    res = _verify(unit)
    assert "Unknown key" in res.stderr and "ProtectSytem" in res.stderr


def test_unit_is_sandboxed(tmp_path: Path) -> None:
    unit = _as_installed_here(tmp_path)
    res = subprocess.run([_analyze(), "security", "--offline=yes",
                          # In tenths: the exit status fails above MAX_EXPOSURE.
                          f"--threshold={round(MAX_EXPOSURE * 10)}", str(unit)],
                         capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert level is not None, res.stdout + res.stderr
    assert float(level.group(1)) <= MAX_EXPOSURE, res.stdout
    assert res.returncode == 0, res.stdout + res.stderr


def test_unit_runs_the_commands_that_exist(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in re.findall(r"(?m)^Exec\w+=(.*)$", text):
        args = line.split()
        assert args[0] == INSTALLED
        assert args[1] in ("serve", "check-config")
        assert "--config" in args and "--data-dir" in args
    assert "DynamicUser=yes" in text and "StateDirectory=intake-gateway" in text


@pytest.mark.parametrize("directive", ["NoNewPrivileges=yes", "ProtectSystem=strict",
                                       "PrivateTmp=yes", "CapabilityBoundingSet=",
                                       "SystemCallFilter=@system-service"])
def test_unit_keeps_the_main_sandboxing_lines(directive: str) -> None:
    assert re.search(rf"(?m)^{re.escape(directive)}$", UNIT.read_text())
