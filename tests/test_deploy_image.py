"""deploy/Dockerfile, read by a Dockerfile parser: multi-stage, non-root, health check, slim.

No Docker daemon runs here (the client only), so the image is not built in the suite; these are
the properties a reviewer would check, asserted on the parsed instructions.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy_files import DEPLOY, ROOT

BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cc|cargo|rustc|"
                         r"python3?-dev|libc6?-dev|pkg-config)\b")


def _stages(parser: DockerfileParser) -> list[list[dict[str, str]]]:
    stages: list[list[dict[str, str]]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages and ins["instruction"] != "COMMENT":
            stages[-1].append(ins)
    return stages


@pytest.fixture
def stages() -> list[list[dict[str, str]]]:
    return _stages(DockerfileParser(str(DEPLOY / "Dockerfile")))


def test_multi_stage_with_the_final_stage_copying_from_the_build(
        stages: list[list[dict[str, str]]]) -> None:
    assert len(stages) >= 2
    final = stages[-1]
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    build_name = stages[0][0]["value"].split()[-1]
    assert any(c.startswith(f"--from={build_name} ") for c in copies)


def test_final_stage_runs_as_a_non_root_user(stages: list[list[dict[str, str]]]) -> None:
    users = [i["value"] for i in stages[-1] if i["instruction"] == "USER"]
    assert users, "the final stage has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # The uid the Kubernetes securityContext and the compose volumes expect.
    assert user == "10001"


def test_final_stage_has_a_healthcheck_on_healthz(stages: list[list[dict[str, str]]]) -> None:
    checks = [i["value"] for i in stages[-1] if i["instruction"] == "HEALTHCHECK"]
    assert len(checks) == 1 and "/healthz" in checks[0] and "CMD" in checks[0]
    assert not checks[0].strip().upper().startswith("NONE")


def test_no_build_tools_in_the_final_stage(stages: list[list[dict[str, str]]]) -> None:
    final_runs = [i["value"] for i in stages[-1] if i["instruction"] == "RUN"]
    for run in final_runs:
        assert not BUILD_TOOLS.search(run), run
        assert "apt-get install" not in run and "pip install" not in run, run
    base = stages[-1][0]["value"].split()[0]
    assert base in ("${PYTHON_IMAGE}", "python:3.11-slim-bookworm")
    parser = DockerfileParser(str(DEPLOY / "Dockerfile"))
    assert all("slim" in image for image in parser.parent_images)
    # ...while the build stage is where they belong.
    assert any(BUILD_TOOLS.search(i["value"]) for i in stages[0] if i["instruction"] == "RUN")


def test_every_copied_file_exists_and_is_in_the_build_context(
        stages: list[list[dict[str, str]]]) -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in stages:
        for ins in stage:
            if ins["instruction"] != "COPY" or ins["value"].startswith("--from="):
                continue
            *sources, _dest = shlex.split(ins["value"])
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src in allowed, f"{src} is excluded by .dockerignore"


def test_the_image_starts_the_container_config(stages: list[list[dict[str, str]]]) -> None:
    final = stages[-1]
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert "deploy/container.toml /etc/intake/gateway.toml" in copies
    cmd = next(i["value"] for i in final if i["instruction"] == "CMD")
    assert "/etc/intake/gateway.toml" in cmd and "serve" in cmd
    listen = tomllib.loads((DEPLOY / "container.toml").read_text())["server"]["listen"]
    expose = next(i["value"] for i in final if i["instruction"] == "EXPOSE")
    assert listen.rsplit(":", 1)[1] == expose


def _pins(path: str) -> dict[str, str]:
    text = (ROOT / path).read_text()
    return {m.group(1).lower(): m.group(2)
            for m in re.finditer(r"(?m)^([A-Za-z0-9_.\-]+)==([^\s\\]+)", text)}


def test_runtime_lock_matches_the_main_lock_and_the_dependencies() -> None:
    """deploy/requirements.lock is the runtime part of requirements.lock, at the same pins.
    Re-pin it after requirements.lock: ``uv pip compile pyproject.toml --extra brokers
    --generate-hashes --python-version 3.11 --constraint requirements.lock
    --output-file deploy/requirements.lock``."""
    runtime, full = _pins("deploy/requirements.lock"), _pins("requirements.lock")
    assert runtime, "deploy/requirements.lock pins nothing"
    differing = {name: (v, full.get(name)) for name, v in runtime.items() if full.get(name) != v}
    assert not differing, f"pinned differently from requirements.lock: {differing}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("nats", "rabbitmq", "redis"):
        wanted += project["optional-dependencies"][extra]
    names = {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
             for dep in wanted}
    missing = names - set(runtime)
    assert not missing, f"runtime dependencies missing from deploy/requirements.lock: {missing}"
    for tool in ("pytest", "mypy", "ruff", "playwright", "schemathesis"):
        assert tool not in runtime, f"{tool} would be in the image"


def test_the_container_config_passes_check_config(tmp_path: Path) -> None:
    """deploy/container.toml, as the image, the compose file and the ConfigMap use it."""
    env = {**os.environ, "INTAKE_POSTGRES_DSN": "postgresql://127.0.0.1:5432/test",
           "INTAKE_API_SECRET": "s", "INTAKE_EVENTS_TOKEN": "t"}
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config",
                          str(DEPLOY / "container.toml"), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    if "store.backend = 'postgres' is not available" in res.stderr:
        pytest.skip("needs the PostgreSQL store ([store] backend = \"postgres\"), which this "
                    "build does not have yet")
    assert res.returncode == 0, res.stderr
    assert "store postgres" in res.stdout and "queue nats" in res.stdout
