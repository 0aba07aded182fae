"""``caddy validate`` on a Caddyfile, for the compose proxy's and the operators' guide's."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gateway.testing.services import require_executable


def caddy_validate(caddyfile: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """Adapt and provision ``caddyfile`` without serving; Caddy's state goes under ``home``."""
    caddy = require_executable("caddy", hint="Debian package caddy; .ci/run installs it")
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([caddy, "validate", "--adapter", "caddyfile", "--config",
                           str(caddyfile)], capture_output=True, text=True, timeout=60, env=env)
