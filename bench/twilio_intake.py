"""Twilio SMS webhook intake, durable, against a bare aiohttp handler: same machine, same load.

    .venv/bin/python bench/twilio_intake.py [--seconds 10] [--connections 64]

Every request is a real Twilio webhook: a form with a new ``MessageSid`` and a new sender, signed
with ``X-Twilio-Signature`` for the URL it is posted to. The signatures are computed here, in
Python, before the runs (HMAC-SHA1 needs the auth token, which wrk's Lua lacks), written one
request per line to a file, and replayed by ``twilio_replay.lua`` in wrk, each line once.

1. bare: this script's ``--serve-bare`` mode, an aiohttp handler that reads the form body and
   answers a constant TwiML ``<Message>``: the floor under any Python webhook.
2. gateway: ``intake-gateway serve`` with only the twilio adapter's webhook in the path: the
   signature checked with twilio's RequestValidator, a new contact and ticket committed durably
   (SQLite, ``synchronous=FULL``, group commit), the acknowledgement answered in TwiML.

Each server is pinned to one core (``taskset -c 0``), wrk to the other, after a warm-up with the
same settings. Prints requests/s, the ratio and p50/p99 latency; then checks that the store holds
one ticket per answered request (wrk abandons what is in flight at its deadline, so up to that
many more). Exits 1 when an answer was not 2xx, a request was replayed because the file ran out,
or the check fails. Target (issue 4): ratio >= 0.4.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TARGET_RATIO = 0.4
SID = "AC" + "be" * 16
TOKEN = "bench-twilio-auth-token"
OURS = "+14155550100"
# Ordinary requests (no safety words): a high-priority one would also queue an SMS.
TEXTS = (
    "您好，我的宽带今天下午开始网速很慢，麻烦帮忙看一下",
    "Hi, could you tell me when my order will be delivered?",
    "请问发票什么时候可以开出来",
    "The app asks me to log in again every day, is that normal?",
    "我想修改一下收货地址",
    "Do you have the charger for model LX-200 in stock?",
)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class Run:
    label: str
    rps: float
    p50_ms: float
    p99_ms: float
    completed: int
    sent: int
    ok: int
    acked: int
    other: int
    wrapped: int
    socket_errors: int
    in_flight_warm: int = 0
    cpu_us: float = 0.0
    """Server CPU time per answered request: barely moved by neighbours stealing the core."""
    """Requests the warm-up left in flight (each may have made a ticket nobody was told)."""

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed - self.socket_errors


# -- the bare server -----------------------------------------------------------------------------


def serve_bare(listen: str) -> None:
    """The baseline: read the form, answer a constant TwiML message."""
    from aiohttp import web

    answer = (b'<?xml version="1.0" encoding="UTF-8"?><Response><Message>'
              b"CX-20250101-00001-3</Message></Response>")

    async def handle(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(body=answer, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/twilio/sms", handle)
    host, _, port = listen.rpartition(":")
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)


# -- requests ------------------------------------------------------------------------------------


def write_requests(path: Path, url: str, tag: int, count: int) -> None:
    """``count`` signed webhooks for ``url``, one ``signature<TAB>body`` line each."""
    from intake_adapters.twilio.protocol import compute_twilio_signature

    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            sid = f"SM{tag:04x}{i:028x}"
            params = [("ToCountry", "US"), ("SmsMessageSid", sid), ("NumMedia", "0"),
                      ("SmsSid", sid), ("SmsStatus", "received"),
                      ("Body", f"{TEXTS[i % len(TEXTS)]} (#{tag}-{i})"), ("To", OURS),
                      ("NumSegments", "1"), ("MessageSid", sid), ("AccountSid", SID),
                      ("From", f"+8613{tag % 10}{i:08d}"), ("ApiVersion", "2010-04-01")]
            signature = compute_twilio_signature(TOKEN, url, params)
            out.write(f"{signature}\t{urlencode(params)}\n")


# -- running -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen within 30 s:\n{log.read_text(errors='replace')}")


def start(cmd: list[str], cpu: int, log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def parse(label: str, out: str) -> Run:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if not m:
            raise ValueError(f"wrk printed no {pct}% latency:\n{out}")
        return float(m.group(1)) * _UNIT_MS[m.group(2)]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    done = re.search(r"^\s*(\d+) requests in", out, re.M)
    bench = re.search(r"^BENCH sent=(\d+) ok=(\d+) acked=(\d+) other=(\d+) wrapped=(\d+)",
                      out, re.M)
    if not (rps and done and bench):
        raise ValueError(f"cannot read wrk's output:\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sent, ok, acked, other, wrapped = (int(g) for g in bench.groups())
    return Run(label=label, rps=float(rps.group(1)), p50_ms=latency("50"), p99_ms=latency("99"),
               completed=int(done.group(1)), sent=sent, ok=ok, acked=acked, other=other,
               wrapped=wrapped,
               socket_errors=sum(int(g) for g in sock.groups()) if sock else 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    # Fields 14 and 15 (utime, stime) after the command name, which may contain spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(args: argparse.Namespace, url: str, requests: Path, seconds: float, label: str,
        pid: int) -> Run:
    cmd = ["taskset", "-c", str(args.wrk_cpu), "wrk", "-t1", f"-c{args.connections}",
           f"-d{seconds:g}s", "--latency", "-s", str(BENCH / "twilio_replay.lua"), url, "--",
           str(requests)]
    before = cpu_seconds(pid)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    used = cpu_seconds(pid) - before
    if done.returncode != 0:
        sys.exit(f"wrk failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    if args.verbose:
        print(f"$ {' '.join(cmd)}\n{done.stdout}", flush=True)
    result = parse(label, done.stdout)
    result.cpu_us = used / max(result.completed, 1) * 1e6
    return result


def bench(args: argparse.Namespace, work: Path, *, gateway: bool) -> tuple[Run, int | None]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/twilio/sms"
    warm, run = work / f"warm-{port}.txt", work / f"run-{port}.txt"
    tag = 1 if gateway else 2
    write_requests(warm, url, tag * 10, args.requests // 4)
    write_requests(run, url, tag * 10 + 1, args.requests)
    data = work / "data"
    log = work / ("gateway.log" if gateway else "bare.log")
    if gateway:
        config = work / "gateway.toml"
        config.write_text(
            "[adapters.twilio]\nenabled = true\n"
            f'account_sid = "{SID}"\nauth_token_env = "BENCH_TWILIO_TOKEN"\n'
            f'sms_from = "{OURS}"\napi_base_url = "http://127.0.0.1:9"\n')
        env = {**os.environ, "BENCH_TWILIO_TOKEN": TOKEN}
        proc = start([str(Path(sys.executable).parent / "intake-gateway"), "serve",
                      "--config", str(config), "--listen", f"127.0.0.1:{port}",
                      "--data-dir", str(data)], args.server_cpu, log, env)
    else:
        proc = start([sys.executable, str(Path(__file__).resolve()), "--serve-bare",
                      f"127.0.0.1:{port}"], args.server_cpu, log)
    try:
        wait_ready(port, proc, log, "the gateway" if gateway else "the bare server")
        label = "gateway (twilio)" if gateway else "bare aiohttp"
        first = wrk(args, url, warm, args.warmup, f"{label} warm-up", proc.pid)
        result = wrk(args, url, run, args.seconds, label, proc.pid)
        tickets = None
        if gateway:
            # /readyz is a round trip through the single writer: all before it is committed.
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30).close()
            with sqlite3.connect(f"file:{data / 'intake.sqlite3'}?mode=ro", uri=True) as db:
                tickets = db.execute("SELECT count(*) FROM tickets").fetchone()[0]
            tickets -= first.acked  # the warm-up's tickets
            result.in_flight_warm = first.in_flight
        if first.wrapped or first.other:
            sys.exit(f"the warm-up was not clean: {first}")
        return result, tickets
    except (OSError, urllib.error.URLError) as exc:
        sys.exit(f"cannot read the gateway's store: {exc}")
    finally:
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10, help="measured duration per run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--requests", type=int, default=120_000,
                   help="signed requests precomputed per run (each is sent once)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--wrk-cpu", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--serve-bare", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-twilio-") as tmp:
        work = Path(tmp)
        bare, _ = bench(args, work, gateway=False)
        gw, tickets = bench(args, work, gateway=True)
    print(f"{'server':<18} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'2xx':>8} {'acked':>8} {'non-2xx':>8} {'sockerr':>8} {'cpu us/req':>10}")
    for r in (bare, gw):
        ratio = "" if r is bare else f"{r.rps / bare.rps:.2f}"
        print(f"{r.label:<18} {r.rps:>8.0f} {ratio:>6} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.ok:>8} {r.acked:>8} {r.other:>8} {r.socket_errors:>8} {r.cpu_us:>10.0f}")
    ratio = gw.rps / bare.rps
    failures = []
    if gw.other or bare.other or gw.socket_errors:
        failures.append("answers other than 2xx, or socket errors")
    if gw.wrapped or bare.wrapped:
        failures.append("the request file ran out (some requests were replays): raise "
                        "--requests")
    slack = gw.in_flight + gw.in_flight_warm
    if tickets is None or not gw.acked <= tickets <= gw.acked + slack:
        failures.append(f"tickets in the store: {tickets}, expected {gw.acked}..{gw.acked + slack}")
    else:
        print(f"store check: {tickets} tickets for {gw.acked} acknowledged answers "
              f"(+ up to {slack} abandoned by wrk at its deadlines): ok")
    print(f"ratio gateway/bare = {ratio:.2f} (target >= {TARGET_RATIO}); CPU per request "
          f"{gw.cpu_us / bare.cpu_us:.1f}x the bare handler's (a CPU-bound ratio of "
          f"{bare.cpu_us / gw.cpu_us:.2f} on a quiet core)")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
