"""deploy/compose.yaml against the compose-spec JSON Schema, and what the schema cannot see.

The schema is the one check-jsonschema vendors from the compose-spec project (``vendor.
compose-spec``); ``docker compose config`` would need the compose plugin, which this machine's
docker client lacks.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.caddy_validate import caddy_validate
from tests.deploy_files import DEPLOY, env_names_in_container_config


def _schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return dict(json.loads(vendor.joinpath("compose-spec.json").read_text()))


@pytest.fixture
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def _validator() -> jsonschema.protocols.Validator:
    schema = _schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_compose_file_is_valid_compose_spec(compose: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_validator_refuses_a_broken_file(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["gateway-a"]["restrat"] = "always"  # a typo compose would refuse
    assert list(_validator().iter_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["proxy"]["depends_on"] = {"gateway-a": {"condition": "when-ready"}}
    assert list(_validator().iter_errors(broken))


def test_two_replicas_wait_for_one_migration_on_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = [name for name, s in services.items()
                if s.get("command") is None and s.get("image") == "intake-gateway:latest"]
    assert sorted(replicas) == ["gateway-a", "gateway-b"]
    for name in replicas:
        needs = services[name]["depends_on"]
        assert needs["migrate"] == {"condition": "service_completed_successfully"}
        assert needs["postgres"] == {"condition": "service_healthy"}
        assert "nats" in needs
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]
        # Both replicas read the one shared attachments volume.
        assert any(v.startswith("attachments:") for v in services[name]["volumes"])
    migrate = services["migrate"]
    assert migrate["command"][0] == "migrate" and migrate["restart"] == "no"
    assert "postgres" in services and "nats" in services


def test_tls_proxy_fronts_both_replicas(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    assert any(p.startswith("443:") for p in proxy["ports"])
    caddyfile = (DEPLOY / "compose" / "Caddyfile").read_text()
    upstreams = re.search(r"reverse_proxy\s+([^{]+)\{", caddyfile)
    assert upstreams is not None
    assert sorted(upstreams.group(1).split()) == ["gateway-a:8080", "gateway-b:8080"]
    assert "health_uri /readyz" in caddyfile
    # Only the proxy is published: replicas, PostgreSQL and NATS stay on the compose network.
    published = [n for n, s in compose["services"].items() if s.get("ports")]
    assert published == ["proxy"]


def test_every_secret_the_config_reads_is_in_the_env_example() -> None:
    example = (DEPLOY / "compose" / "env.example").read_text()
    given = set(re.findall(r"(?m)^([A-Z0-9_]+)=", example))
    assert env_names_in_container_config() <= given
    assert env_names_in_container_config(), "deploy/container.toml names no secret?"


def test_caddyfile_is_valid_for_caddy(tmp_path: Path) -> None:
    res = caddy_validate(DEPLOY / "compose" / "Caddyfile", tmp_path)
    assert res.returncode == 0 and "Valid configuration" in res.stdout + res.stderr, res.stderr
    broken = tmp_path / "Caddyfile"
    broken.write_text((DEPLOY / "compose" / "Caddyfile").read_text()
                      .replace("health_uri", "health_url"))
    assert caddy_validate(broken, tmp_path).returncode != 0


def test_every_file_the_compose_file_names_is_there(compose: dict[str, Any]) -> None:
    """Mounted files exist; the operator's own copies (.env, the password) have an example."""
    named: list[str] = []
    for service in compose["services"].values():
        named += [v.split(":")[0] for v in service.get("volumes", []) if v.startswith(".")]
        env_file = service.get("env_file")
        named += [env_file] if isinstance(env_file, str) else list(env_file or [])
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    named += [s["file"] for s in compose.get("secrets", {}).values()]
    assert named
    for name in named:
        path = DEPLOY / name
        example = (path.with_name("env.example") if path.name == ".env"
                   else path.with_name(path.name + ".example"))
        assert path.exists() or example.exists(), name
