"""Tickets per second and CPU per ticket: 1, 2 and 3 replicas on PostgreSQL against the
single-process SQLite gateway, in one run, on one machine.

    .venv/bin/python bench/replicas.py [--seconds 8] [--connections 32] [-v]

Every server (the gateway processes and a private PostgreSQL cluster started for the run, see
gateway/testing/private_postgres.py) is pinned to CPU 0; the load (one ``wrk`` per replica,
``post_unique.lua``: every request a new contact and a new ticket, the store's worst case) to
CPU 1. So the figures say what one core does, and CPU per ticket (gateway processes and
PostgreSQL's backends, from /proc) is the number to carry into docs/scaling.md's model.

For each run it prints tickets/s, gateway CPU µs per ticket, PostgreSQL CPU µs per ticket,
their sum, the WAL fsyncs per second and tickets per fsync (pg_stat_wal: how well commits
are grouped), and checks the database against wrk's 201s.
Exit 1 when an answer was not 2xx or a check fails.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from api_intake import (  # noqa: E402  (a sibling script, not a package)
    WrkResult,
    accepts,
    free_port,
    parse_wrk,
    stop,
    wait_until,
)

from gateway.testing.private_postgres import PrivatePostgres  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = 0, 1


@dataclass
class Run:
    label: str
    tickets_s: float
    gateway_us: float
    pg_us: float
    commits_s: float
    tickets: int
    answered_201: int
    warm_201: int
    non_2xx: int
    p99_ms: float

    @property
    def total_us(self) -> float:
        return self.gateway_us + self.pg_us


def ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def cluster_pids(pg: PrivatePostgres) -> list[int]:
    """The postmaster and its children (backends, WAL writer, checkpointer...)."""
    master = int((pg.data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(parts[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


def serve(port: int, data: Path, log: Path, env: dict[str, str],
          config: Path | None) -> subprocess.Popen[bytes]:
    cmd = ["taskset", "-c", str(SERVER_CPU), str(Path(sys.executable).parent / "intake-gateway"),
           "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)]
    if config is not None:
        cmd += ["--config", str(config)]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **env})


def load(ports: list[int], seconds: float, connections: int, tag: str,
         verbose: bool) -> list[WrkResult]:
    each = max(1, connections // len(ports))
    procs = [subprocess.Popen(
        ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{each}", f"-d{seconds:g}s",
         "--latency", "-s", str(BENCH / "post_unique.lua"),
         f"http://127.0.0.1:{port}/v1/messages", "--", f"{tag}-{i}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, port in enumerate(ports)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"wrk failed: {err}")
        if verbose:
            print(out)
        results.append(parse_wrk(tag, out))
    return results


def measure(label: str, procs: list[subprocess.Popen[bytes]], ports: list[int],
            pg_pids: list[int], args: argparse.Namespace,
            commits: tuple[str, str] | None) -> tuple[Run, list[WrkResult]]:
    tag = label.replace(" ", "")
    warm = load(ports, args.warmup, args.connections, f"warm-{tag}", False)
    before_gw, before_pg = ticks([p.pid for p in procs]), ticks(pg_pids)
    before_commits = _commits(*commits) if commits else 0
    started = time.monotonic()
    results = load(ports, args.seconds, args.connections, f"run-{tag}", args.verbose)
    elapsed = time.monotonic() - started
    gw = (ticks([p.pid for p in procs]) - before_gw) / TICK
    pg = (ticks(pg_pids) - before_pg) / TICK
    done = sum(r.answered_201 for r in results)
    commits_s = ((_commits(*commits) - before_commits) / elapsed) if commits else 0.0
    run = Run(label=label, tickets_s=done / elapsed, gateway_us=gw / max(done, 1) * 1e6,
              pg_us=pg / max(done, 1) * 1e6, commits_s=commits_s, tickets=0,
              answered_201=sum(r.answered_201 for r in results),
              warm_201=sum(r.answered_201 for r in warm),
              non_2xx=sum(r.non_2xx + r.socket_errors for r in results),
              p99_ms=max(r.p99_ms for r in results))
    return run, results


def _commits(dsn: str, db: str) -> int:
    """WAL flushes to disk so far (the private cluster's): each durable commit needs one, and
    a group commit (ours, or PostgreSQL's own when commits meet) shares one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
        return int(row[0]) if row else 0


def bench_sqlite(args: argparse.Namespace, work: Path) -> Run:
    port, data, log = free_port(), work / "sqlite-data", work / "sqlite.log"
    proc = serve(port, data, log, {}, None)
    try:
        wait_until(lambda: accepts(port), "the SQLite gateway", proc, log)
        run, _ = measure("sqlite x1", [proc], [port], [], args, None)
    finally:
        stop(proc)
    conn = sqlite3.connect(data / "intake.sqlite3")
    tickets = conn.execute("SELECT count(*), count(DISTINCT number) FROM tickets").fetchone()
    conn.close()
    run.tickets = int(tickets[0]) if tickets[0] == tickets[1] else -1
    return run


def bench_postgres(args: argparse.Namespace, work: Path, pg: PrivatePostgres, n: int) -> Run:
    db = f"bench{n}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    dsn = pg.dsn.rsplit("/", 1)[0] + f"/{db}"
    env = {"INTAKE_BENCH_DSN": dsn}
    config = work / "pg.toml"
    # No SMTP listener: the replicas would all want its port (the load is the API's).
    config.write_text('[store]\nbackend = "postgres"\ndsn_env = "INTAKE_BENCH_DSN"\n'
                      "[adapters.smtp]\nenabled = false\n")
    subprocess.run([str(Path(sys.executable).parent / "intake-gateway"), "migrate", "--config",
                    str(config)], check=True, capture_output=True, env={**os.environ, **env})
    ports = [free_port() for _ in range(n)]
    procs = [serve(port, work / f"pg{n}-{i}", work / f"pg{n}-{i}.log", env, config)
             for i, port in enumerate(ports)]
    try:
        for i, (port, proc) in enumerate(zip(ports, procs, strict=True)):
            wait_until(lambda port=port: accepts(port), f"replica {i}", proc,
                       work / f"pg{n}-{i}.log")
        run, _ = measure(f"postgres x{n}", procs, ports, cluster_pids(pg), args, (pg.dsn, db))
    finally:
        for proc in procs:
            stop(proc)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT number) FROM tickets").fetchone()
    assert row is not None
    run.tickets = int(row[0]) if row[0] == row[1] else -1
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="intake-bench-replicas-"))
    runs = [bench_sqlite(args, work)]
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {SERVER_CPU})  # the cluster inherits CPU 0
    pg = PrivatePostgres()
    try:
        pg.start()
    finally:
        os.sched_setaffinity(0, affinity)
    try:
        for n in (1, 2, 3):
            runs.append(bench_postgres(args, work, pg, n))
    finally:
        pg.__exit__(None, None, None)  # stop it and remove its data directory
    base = runs[0]
    print(f"\n{args.seconds:g} s per run, {args.connections} connections, servers on CPU "
          f"{SERVER_CPU}, load on CPU {LOAD_CPU}; µs are CPU time per ticket\n")
    print(f"{'run':<12} {'tickets/s':>10} {'x sqlite':>9} {'gw µs':>8} {'pg µs':>8} "
          f"{'total µs':>9} {'fsyncs/s':>10} {'t/fsync':>9} {'p99 ms':>8}  check")
    failed = False
    for r in runs:
        per_commit = r.tickets_s / r.commits_s if r.commits_s else 0.0
        # wrk stops waiting at its deadline; the store may commit a few in flight after that.
        answered = r.answered_201 + r.warm_201
        ok = r.non_2xx == 0 and answered <= r.tickets <= answered + 2 * args.connections
        failed |= not ok
        print(f"{r.label:<12} {r.tickets_s:>10.0f} {r.tickets_s / base.tickets_s:>9.2f} "
              f"{r.gateway_us:>8.0f} {r.pg_us:>8.0f} {r.total_us:>9.0f} {r.commits_s:>10.0f} "
              f"{per_commit:>9.1f} {r.p99_ms:>8.1f}  "
              f"{'ok' if ok else 'FAIL'} ({r.tickets} tickets, {answered} 201s, "
              f"{r.non_2xx} errors)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
