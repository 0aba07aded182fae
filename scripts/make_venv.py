"""Build the project's virtual environment for ``make``: check, repair, install with progress.

Runs with the system's ``python3`` and the standard library only, before anything is installed.
Each problem a newcomer meets on a fresh machine ends in one line that says what to do:

- a Python older than 3.11;
- a Python that cannot make virtual environments (Debian's ``python3`` without ``python3-venv``
  has ``venv`` but no ``ensurepip``, so ``python3 -m venv`` leaves a ``.venv`` without pip);
- a half-made ``.venv`` left by such a failure, or by an interrupted install: it is recognised
  (no working pip inside) and made again instead of failing every retry with
  ``No module named pip``.

The install shows progress (one package after the other) instead of a silent minute, and keeps
pip's whole output in ``<venv>/install.log`` for when something goes wrong.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MIN_VERSION = (3, 11)
PIP_QUIET = ("--disable-pip-version-check", "--no-input")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", re.MULTILINE)
_COLLECTING = re.compile(r"^(?:Collecting ([A-Za-z0-9][A-Za-z0-9._-]*)=="
                         r"|Processing \S*/([A-Za-z0-9][A-Za-z0-9._]*)-\d)")
"""One line per package: "Collecting name==1.2" from an index, "Processing /path/name-1.2-…whl"
from a local wheel directory (pip's find-links)."""


class Refusal(Exception):
    """A problem the user fixes; its text is the one line printed."""


def say(line: str) -> None:
    print(f"make: {line}", file=sys.stderr, flush=True)


def check_python(python: str) -> None:
    """The interpreter ``make`` was given: new enough, and able to make a venv with pip."""
    probe = ("import sys\n"
             "print('%d.%d' % sys.version_info[:2])\n"
             "try:\n import venv, ensurepip\n print('venv-ok')\n"
             "except ImportError as exc:\n print('venv-missing', exc.name)\n")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                             timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise Refusal(f"cannot run {python!r} ({exc}); install Python {MIN_VERSION[0]}."
                      f"{MIN_VERSION[1]}+ (`sudo apt install python3 python3-venv`) or point "
                      "make at one: `make run PYTHON=python3.12`") from None
    major, minor = (int(part) for part in out[0].split("."))
    if (major, minor) < MIN_VERSION:
        raise Refusal(f"{python} is Python {major}.{minor}; intake-gateway needs "
                      f"{MIN_VERSION[0]}.{MIN_VERSION[1]}+: install a newer one and run "
                      "`make run PYTHON=python3.12` (or any 3.11+)")
    if out[1] != "venv-ok":
        raise Refusal(f"{python} cannot make virtual environments (no module "
                      f"{out[2] if len(out) > 2 else 'venv'}): install it with "
                      f"`sudo apt install python3-venv` (Debian/Ubuntu; or python{major}.{minor}"
                      "-venv), then run `make run` again")


def venv_is_whole(venv: Path) -> bool:
    """A venv whose own Python runs and imports pip."""
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    try:
        # pip from the venv itself, not one leaking in from the base Python's site-packages.
        subprocess.run([str(python), "-c", "import os, sys, pip; sys.exit(not os.path.realpath"
                        "(pip.__file__).startswith(os.path.realpath(sys.prefix) + os.sep))"],
                       capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False
    return True


def ensure_venv(python: str, venv: Path) -> None:
    """Make ``venv`` with ``python``, first removing a half-made one."""
    if venv.exists():
        if venv_is_whole(venv):
            return
        if not (venv / "pyvenv.cfg").exists() and any(venv.iterdir()):
            # Not something we made: never delete a directory we cannot recognise.
            raise Refusal(f"{venv} exists but is not a virtual environment; move it away and "
                          "run `make run` again")
        say(f"{venv} is half-made (no working pip in it): making it again")
        shutil.rmtree(venv)
    say(f"making the virtual environment {venv} with {python}")
    made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0 or not venv_is_whole(venv):
        shutil.rmtree(venv, ignore_errors=True)
        last = (made.stderr.strip().splitlines() or ["no pip in the new environment"])[-1]
        raise Refusal(f"`{python} -m venv` failed ({last}); on Debian/Ubuntu install "
                      "`sudo apt install python3-venv`, then run `make run` again")


def install_lock(venv: Path, lock: Path) -> None:
    """``pip install --require-hashes -r lock``, one progress step per package."""
    names = _REQUIREMENT.findall(lock.read_text(encoding="utf-8"))
    if not names:
        return
    log_path = venv / "install.log"
    total = len(names)
    say(f"installing {total} pinned packages into {venv} (about a minute; pip's output goes "
        f"to {log_path})")
    tty = sys.stderr.isatty()
    done = 0
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "pip", "install", *PIP_QUIET,
             "--progress-bar", "off", "--require-hashes", "-r", str(lock)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            match = _COLLECTING.match(line)
            if match:
                done += 1
                name = match.group(1) or match.group(2)
                step = f"[{done:>{len(str(total))}}/{total}] {name}"
                if tty:
                    print(f"\r\033[K  {step}", end="", file=sys.stderr, flush=True)
                elif done == 1 or done % 10 == 0 or done == total:
                    print(f"  {step}", file=sys.stderr, flush=True)
            elif line.startswith("Installing collected packages"):
                if tty:
                    print(file=sys.stderr)
                say(f"unpacking {total} packages")
        code = proc.wait()
    if code != 0:
        tail = log_path.read_text(encoding="utf-8").strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise Refusal(f"pip could not install the pinned packages (above; all of it in "
                      f"{log_path}); check the network or the package index and run "
                      "`make run` again")


def install_project(venv: Path, root: Path) -> None:
    """The project itself, editable, without resolving anything (the lock has it all)."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", *PIP_QUIET, "--quiet",
         "--no-deps", "--no-build-isolation", "-e", str(root)],
        capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        raise Refusal("pip could not install the project itself (above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=os.environ.get("PYTHON", "python3"))
    parser.add_argument("--venv", default=".venv")
    parser.add_argument("--lock", default="requirements.lock")
    args = parser.parse_args(argv)
    venv, lock = Path(args.venv), Path(args.lock)
    try:
        check_python(args.python)
        ensure_venv(args.python, venv)
        install_lock(venv, lock)
        install_project(venv, lock.resolve().parent)
    except Refusal as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        say(f"interrupted; the next `make` finishes {venv}")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
