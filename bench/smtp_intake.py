"""SMTP intake, durable with the acknowledgement queued, against a bare aiosmtpd answering 250.

    .venv/bin/python bench/smtp_intake.py [--messages 2000] [--connections 20] [--size 1024]

Same machine, same run, same load. Each server runs pinned to CPU 0 (``taskset -c 0``) and is
loaded by Postfix's ``smtp-source`` pinned to CPU 1, one connection per message::

    smtp-source -s 20 -m 2000 -l 1024 -f load@example.org -t support@example.org 127.0.0.1:PORT

1. bare: aiosmtpd's ``SMTP`` on an asyncio loop (as the adapter runs it), ``handle_DATA``
   answering ``250`` at once;
2. gateway: ``intake-gateway serve`` on a fresh data directory with the ``smtp`` adapter: each
   mail is parsed, its raw bytes kept, and the message committed (fsynced, group commit) with
   its acknowledgement row before the ``250``. All mail comes from one sender with the same
   text, so after the first ticket the mails are duplicates; each still queues an
   acknowledgement, which the dispatcher sends (to a local relay, on CPU 1) five times and then
   suppresses (the per-recipient limit), on the same core as the intake.

Each server gets a warm-up run of 200 messages first. Prints messages/s for both, the ratio
(target ≥ 0.5, issue 3) and the server's CPU time per message; then checks that the store holds
exactly one ticket event per message sent to the gateway. Exits 1 when the check fails or
smtp-source reported an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
TARGET_RATIO = 0.5
WARMUP = 200
EXTRA = os.environ.get("BENCH_SMTP_EXTRA", "").replace("\\n", "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_bare(port: int) -> None:
    """The bare server: aiosmtpd on one loop, 250 for every message."""
    from aiosmtpd.smtp import SMTP

    class Answer250:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 2.0.0 OK: queued"

    logging.getLogger("mail.log").setLevel(logging.WARNING)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Answer250(), hostname="bench", ident="bare", enable_SMTPUTF8=True,
                         data_size_limit=26_214_400), "127.0.0.1", port, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(3) == b"220"
    except OSError:
        return False


def wait_for(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 30
    while not accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{what} did not start; its log:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(smtp_source: str, port: int, *, messages: int, sessions: int, size: int) -> float:
    """Run smtp-source on CPU 1; return the wall time it took."""
    cmd = ["taskset", "-c", "1", smtp_source, "-s", str(sessions), "-m", str(messages),
           "-l", str(size), "-f", "load@example.org", "-t", "support@example.org",
           f"127.0.0.1:{port}"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0 or done.stderr.strip():
        sys.exit(f"smtp-source failed ({done.returncode}): {done.stderr.strip()}")
    return took


def measure(label: str, proc: subprocess.Popen[bytes], port: int, smtp_source: str,
            args: argparse.Namespace) -> tuple[float, float]:
    load(smtp_source, port, messages=WARMUP, sessions=args.connections, size=args.size)
    cpu_before = cpu_seconds(proc.pid)
    took = load(smtp_source, port, messages=args.messages, sessions=args.connections,
                size=args.size)
    cpu = cpu_seconds(proc.pid) - cpu_before
    rate = args.messages / took
    print(f"{label:8} {rate:8.0f} msg/s   {took:6.2f} s   "
          f"server CPU {cpu / args.messages * 1e6:6.0f} µs/msg", flush=True)
    return rate, cpu


def count_ticket_events(data_dir: Path) -> int:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "tail", "--from-start",
                          "--data-dir", str(data_dir), "--consumer", "bench"],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    return sum(1 for line in out.stdout.splitlines()
               if json.loads(line)["type"] in ("ticket.created", "ticket.duplicate_received"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=20, help="parallel SMTP sessions")
    parser.add_argument("--size", type=int, default=1024, help="message length (bytes)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="accepted for bench/run_all.py; the run is sized by --messages")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not os.access(smtp_source, os.X_OK) or shutil.which("taskset") is None:
        print("skipped: needs smtp-source (Debian: postfix) and taskset (util-linux)")
        return 0
    if (os.cpu_count() or 1) < 2:
        print("skipped: needs two cores (server on CPU 0, load on CPU 1)")
        return 0

    from gateway.testing.smtp_capture import SmtpCapture

    work = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    results: dict[str, float] = {}
    ok = True
    with SmtpCapture() as relay:
        # -- bare --------------------------------------------------------------------------
        port = free_port()
        log = work / "bare.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, __file__,
                                     "--serve-bare", str(port)], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for(port, proc, log, "the bare server")
            results["bare"], _ = measure("bare", proc, port, smtp_source, args)
        finally:
            proc.terminate()
            proc.wait(10)

        # -- gateway -----------------------------------------------------------------------
        port, http = free_port(), free_port()
        data = work / "data"
        config = work / "gateway.toml"
        config.write_text(f'[adapters.smtp]\nlisten = "127.0.0.1:{port}"\n'
                          'accept = ["support@example.org"]\n' + EXTRA +
                          f'[adapters.mailer]\nport = {relay.port}\n'
                          'from_address = "support@example.org"\n')
        log = work / "gateway.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "gateway.cli",
                                     "serve", "--config", str(config), "--listen",
                                     f"127.0.0.1:{http}", "--data-dir", str(data)],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for(port, proc, log, "the gateway")
            results["gateway"], _ = measure("gateway", proc, port, smtp_source, args)
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=5) as r:
                assert r.status == 200
        finally:
            proc.terminate()
            proc.wait(30)
        stored = count_ticket_events(data)
        expected = WARMUP + args.messages
        print(f"store: {stored} ticket events for {expected} mails sent "
              f"({'ok' if stored == expected else 'MISMATCH'}); "
              f"{len(relay.messages)} acknowledgements relayed, the rest suppressed by the "
              "per-recipient limit")
        ok = stored == expected
    ratio = results["gateway"] / results["bare"]
    print(f"ratio    {ratio:8.2f}   (target >= {TARGET_RATIO}: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
