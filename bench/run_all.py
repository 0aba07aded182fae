"""Run every benchmark script in bench/ and print what each prints.

    .venv/bin/python bench/run_all.py [ARGS...]     (or: make bench ARGS="...")

ARGS go to every script (each takes --seconds and --connections). A benchmark is a script here
named after what it measures; helpers (the bare server, this runner) are not run. Exits non-zero
when any script did, after running them all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# store_breakdown.py is a profile that explains api_intake.py, with no baseline of its own.
NOT_BENCHMARKS = {"run_all.py", "bare_server.py", "store_breakdown.py", "__init__.py"}


def main(argv: list[str]) -> int:
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name not in NOT_BENCHMARKS)
    failed = []
    for script in scripts:
        print(f"=== {script.relative_to(BENCH.parent)} {' '.join(argv)}".rstrip(), flush=True)
        code = subprocess.run([sys.executable, str(script), *argv], check=False).returncode
        if code != 0:
            failed.append(f"{script.name} (exit {code})")
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    print(f"{len(scripts)} benchmark(s) done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
