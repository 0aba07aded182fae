"""The console script: check-config, schema, tail with named consumers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import aiohttp
import msgspec

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


def _example_sections() -> dict[str, str]:
    """The example's text by live table header (``[a.b]`` / ``[[a.b]]``); commented-out
    headers (``# [[triage.rules]]``) stay in the section they are written in."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in (ROOT / "deploy/gateway.example.toml").read_text(encoding="utf-8").splitlines():
        header = re.match(r"\s*\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, [])
        else:
            sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _structs_in(tp: object) -> tuple[list[type[msgspec.Struct]], bool]:
    """Struct types inside a field's type (itself, Optional, list[...]); and whether a list."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [tp], False
    args = typing.get_args(tp)
    found = [s for a in args for s in _structs_in(a)[0]]
    return found, typing.get_origin(tp) is list and bool(found)


def _keys(struct: type[msgspec.Struct], section: str) -> list[tuple[str, str, bool]]:
    """(section, key, is an array of tables) for every field, nested Structs in the same section."""
    out = []
    for field in msgspec.structs.fields(struct):
        nested, is_list = _structs_in(field.type)
        out.append((section, field.encode_name, is_list))
        for sub in nested:
            out.extend(_keys(sub, section))
    return out


def test_example_documents_every_config_key() -> None:
    from gateway.config import Config
    from gateway.plugin import ADAPTER_GROUP
    from gateway.registry import load_plugins

    sections = _example_sections()
    keys: list[tuple[str, str, bool]] = []
    for field in msgspec.structs.fields(Config):
        nested, _ = _structs_in(field.type)
        if not nested:
            # `adapters`, a table of tables: walked below through the installed adapters.
            assert any(s.startswith(field.encode_name + ".") for s in sections), field.name
        for sub in nested:
            keys.extend(_keys(sub, field.encode_name))
    for kind, cls in load_plugins(ADAPTER_GROUP).items():
        keys.extend(_keys(cls.Config, f"adapters.{kind}"))

    missing = []
    for section, key, is_list in keys:
        text = sections.get(section)
        # `key =` on a live or `# `-commented line, or inside an inline table; an array of
        # tables may instead be shown by its (possibly commented) `[[section.key]]` header.
        said = text is not None and (
            re.search(rf"(?m)(^[ \t]*(#[ \t]*)?|[{{,][ \t]*){re.escape(key)}[ \t]*=", text)
            or (is_list and f"[[{section}.{key}]]" in text))
        if not said:
            missing.append(f"[{section}] {key}")
    assert not missing, "not in deploy/gateway.example.toml: " + ", ".join(missing)


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


def test_missing_secret_variable_is_reported_by_check_and_stops_serve(tmp_path: Path) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[adapters.api]\nsecret_env = "NO_SUCH_VARIABLE_HERE"\n')
    res = cli("check-config", "--config", str(conf), "--data-dir", str(tmp_path))
    # The file is valid; the variable is a step of the deployment still to do.
    assert res.returncode == 0 and "to set before serve: $NO_SUCH_VARIABLE_HERE" in res.stdout
    res = cli("serve", "--config", str(conf), "--data-dir", str(tmp_path))
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
