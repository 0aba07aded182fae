"""The wheel shares an environment: it installs only import names of its own, all of the tree,
and keeps the testing kit's dependencies behind an extra (issue 10, item 7)."""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folder in the repository -> import name in the wheel ([tool.setuptools.package-dir]).
FOLDERS = {"gateway": "gateway", "adapters": "intake_adapters", "schemas": "intake_schemas"}
# Import names that distributions on PyPI already own: adapters 1.3.0 and schemas 0.7.1
# (`pip index versions adapters`, `pip index versions schemas`).
OWNED_ELSEWHERE = {"adapters", "schemas"}
TESTING_DEPENDENCIES = {"pytest", "pytest-asyncio", "hypothesis"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Built from a copy of the tree: setuptools writes build/ and an .egg-info beside the
    # sources, and a stale .egg-info in the checkout shadows the installed entry points.
    src = tmp_path_factory.mktemp("src")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--wheel-dir", str(out), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("intake_gateway-*.whl")
    return zipfile.ZipFile(built)


def _tracked(folder: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", folder], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    return [p for p in listed if "__pycache__" not in p]


def test_the_wheel_installs_only_our_own_import_names(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}
    top = {t for t in top if not t.endswith(".dist-info")}
    assert top == set(FOLDERS.values())
    assert not top & OWNED_ELSEWHERE


def test_every_module_and_data_file_of_the_tree_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    missing = []
    for folder, import_name in FOLDERS.items():
        for path in _tracked(folder):
            if "/testing/" not in path and path.endswith((".md",)):
                continue
            inside = import_name + path[len(folder):]
            if inside not in names:
                missing.append(path)
    assert not missing, missing


def test_the_testing_kits_dependencies_are_behind_an_extra(wheel: zipfile.ZipFile) -> None:
    (meta_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    meta = email.parser.Parser().parsestr(wheel.read(meta_name).decode())
    requires = meta.get_all("Requires-Dist") or []
    unconditional = {r.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower()
                     for r in requires if "extra ==" not in r}
    assert not unconditional & TESTING_DEPENDENCIES, sorted(unconditional)
    testing = {r.split(">")[0].strip().lower() for r in requires if 'extra == "testing"' in r}
    assert testing >= TESTING_DEPENDENCIES, sorted(testing)


def test_the_entry_points_name_the_installed_import_names(wheel: zipfile.ZipFile) -> None:
    (ep_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    targets = [line.split("=", 1)[1].strip() for line in wheel.read(ep_name).decode().splitlines()
               if "=" in line]
    assert targets
    roots = {t.split(":")[0].split(".")[0] for t in targets}
    assert roots <= set(FOLDERS.values()), roots


def test_the_gateway_runs_without_the_testing_kit() -> None:
    # Every adapter and the whole runtime import without pytest: the kit is only for integrators.
    code = (
        "import sys, importlib.metadata as md\n"
        "import gateway.cli, gateway.runtime\n"
        "for ep in md.entry_points(group='intake_gateway.adapters'): ep.load()\n"
        "for ep in md.entry_points(group='intake_gateway.publishers'): ep.load()\n"
        "bad = sorted(m for m in ('pytest', 'hypothesis', 'pytest_asyncio') if m in sys.modules)\n"
        "sys.exit(', '.join(bad) or None)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr or res.stdout
