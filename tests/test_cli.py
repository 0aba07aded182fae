"""The console script: check-config, schema, tail with named consumers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=ROOT)


def test_check_config_accepts_the_documented_example(tmp_path: Path) -> None:
    res = cli("check-config", "--config", str(ROOT / "deploy/gateway.example.toml"),
              "--data-dir", str(tmp_path), env={"INTAKE_API_SECRET": "x",
                                                "INTAKE_EVENTS_TOKEN": "y"})
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stdout


def test_unknown_key_fails_at_start_naming_it(tmp_path: Path) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[server]\nlisten = "127.0.0.1:8080"\nlisen = "oops"\n')
    res = cli("check-config", "--config", str(conf), "--data-dir", str(tmp_path))
    assert res.returncode == 2
    assert "lisen" in res.stderr and "server" in res.stderr


def test_unknown_adapter_key_names_the_adapter(tmp_path: Path) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[adapters.api]\nsecret = "inline secrets are refused"\n')
    res = cli("check-config", "--config", str(conf), "--data-dir", str(tmp_path))
    assert res.returncode == 2
    assert "adapters.api" in res.stderr and "secret" in res.stderr


def test_missing_secret_variable_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[adapters.api]\nsecret_env = "NO_SUCH_VARIABLE_HERE"\n')
    res = cli("check-config", "--config", str(conf), "--data-dir", str(tmp_path))
    assert res.returncode == 2 and "NO_SUCH_VARIABLE_HERE" in res.stderr


def test_refuses_public_listener_with_open_api(tmp_path: Path) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[server]\nlisten = "0.0.0.0:8080"\n')
    res = cli("check-config", "--config", str(conf), "--data-dir", str(tmp_path))
    assert res.returncode == 2 and "refusing to listen" in res.stderr


def test_committed_json_schemas_match_the_code(tmp_path: Path) -> None:
    res = cli("schema", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    committed = ROOT / "schemas" / "json"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in committed.iterdir()), \
        "run: intake-gateway schema --out schemas/json"
    for name in generated:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"schemas/json/{name} is stale: run intake-gateway schema --out schemas/json")


async def test_tail_consumer_resumes_where_it_left_off(make_gateway: MakeGateway,
                                                       tmp_path: Path) -> None:
    data = tmp_path / "data"
    gw = await make_gateway(data_dir=data)
    numbers = []
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            async with s.post(f"{gw.url}/v1/messages",
                              json={"contact": {"email": f"t{i}@example.org"},
                                    "text": f"question {i}"}) as resp:
                numbers.append((await resp.json())["ticket_number"])

    def subjects(res: subprocess.CompletedProcess[str]) -> list[str]:
        assert res.returncode == 0, res.stderr
        return [json.loads(line)["subject"] for line in res.stdout.splitlines()]

    first = subjects(cli("tail", "--data-dir", str(data), "--consumer", "crm", "--max", "2"))
    rest = subjects(cli("tail", "--data-dir", str(data), "--consumer", "crm"))
    assert first + rest == numbers
    assert subjects(cli("tail", "--data-dir", str(data), "--consumer", "crm")) == []
    again = subjects(cli("tail", "--data-dir", str(data), "--consumer", "crm", "--from-start"))
    assert again == numbers
    other = subjects(cli("tail", "--data-dir", str(data), "--consumer", "analytics"))
    assert other == numbers
