"""What the deploy/ validators share: the files, and the secrets the container config names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def env_names_in_container_config() -> set[str]:
    """Every environment variable deploy/container.toml reads a secret from (``*_env`` keys)."""
    text = (DEPLOY / "container.toml").read_text()
    return set(re.findall(r'(?m)^\s*\w+_env\s*=\s*"([A-Z0-9_]+)"', text))
