"""IMAP intake: messages per second taken from a 10,000-message Dovecot mailbox.

    .venv/bin/python bench/imap_intake.py [--messages 10000] [--batch-size 50]

A private Dovecot (``gateway.testing.dovecot``) is started and pinned to CPU 1; the messages are
appended first with imapclient (MULTIAPPEND), each from a different customer with its own text,
half of them in Chinese, so every one opens a new ticket (the store's worst case) and queues an
acknowledgement. Then ``intake-gateway serve``, pinned to CPU 0, watches the mailbox: it reads
by UID, keeps each raw message, commits, and flags ``\\Seen``, while its dispatcher sends the
acknowledgements to a local relay (on CPU 1) from the same process.

Prints the time from start to the last message taken (``intake_imap_accepted_total`` on
``/metrics``), messages/s, the gateway's CPU time per message, and how long the acknowledgements
took to drain. Checks that the store holds exactly one ``ticket.created`` per message and that
every message carries ``\\Seen``; exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(url: str, name: str) -> float:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def message(n: int) -> bytes:
    from gateway.testing.drivers_mail import customer_mail

    if n % 2:
        return customer_mail(sender=f"kehu{n}@customers.example.cn",
                             subject=f"宽带故障 {n}", charset="gb2312",
                             text=f"您好，我家的宽带从昨天开始断网，账号 {n}，请尽快处理。",
                             message_id=f"bench-{n}@customers.example.cn")
    return customer_mail(sender=f"customer{n}@customers.example.org",
                         subject=f"Invoice question {n}",
                         text=f"Hello, invoice {n} charges me twice for the same month.",
                         message_id=f"bench-{n}@customers.example.org")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=50, help="adapters.imap batch_size")
    parser.add_argument("--seconds", type=float, default=None,
                        help="accepted for bench/run_all.py; the run is sized by --messages")
    parser.add_argument("--connections", type=int, default=None,
                        help="accepted for bench/run_all.py; one IMAP connection is used")
    args = parser.parse_args()
    if shutil.which("dovecot") is None and not os.access("/usr/sbin/dovecot", os.X_OK):
        print("skipped: needs dovecot (Debian: dovecot-imapd)")
        return 0
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("skipped: needs taskset and two cores")
        return 0

    from gateway.testing.dovecot import PrivateDovecot
    from gateway.testing.services import free_port
    from gateway.testing.smtp_capture import SmtpCapture

    work = Path(tempfile.mkdtemp(prefix="bench-imap-"))
    ok = True
    with PrivateDovecot(users={"support": "bench"}) as dovecot, SmtpCapture() as relay:
        assert dovecot.pid is not None
        subprocess.run(["taskset", "-a", "-p", "-c", "1", str(dovecot.pid)],
                       check=True, capture_output=True)
        os.sched_setaffinity(0, {1})  # this process runs the relay and the appends
        started = time.perf_counter()
        with dovecot.client() as imap:
            for start in range(0, args.messages, 500):
                imap.multiappend("INBOX", [message(n) for n in range(
                    start, min(args.messages, start + 500))])
            exists = imap.select_folder("INBOX")[b"EXISTS"]
        print(f"appended {exists} messages in {time.perf_counter() - started:.1f} s", flush=True)

        (work / "password").write_text("bench")
        http = free_port()
        url = f"http://127.0.0.1:{http}"
        config = work / "gateway.toml"
        config.write_text(
            "[adapters.smtp]\nenabled = false\n"
            f"[adapters.imap]\n[[adapters.imap.mailboxes]]\nname = \"support\"\n"
            f'host = "127.0.0.1"\nport = {dovecot.port}\nssl = false\nusername = "support"\n'
            f'password_file = "{work / "password"}"\nbatch_size = {args.batch_size}\n'
            f'[adapters.mailer]\nport = {relay.port}\nfrom_address = "support@example.com"\n')
        log = work / "gateway.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "gateway.cli",
                                     "serve", "--config", str(config), "--listen",
                                     f"127.0.0.1:{http}", "--data-dir", str(work / "data")],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            started = time.perf_counter()
            while metric(url, "intake_imap_accepted_total") < 0:
                if proc.poll() is not None:
                    sys.exit(f"the gateway exited: {log.read_text(errors='replace')}")
                time.sleep(0.02)
            while True:
                taken = metric(url, "intake_imap_accepted_total")
                quarantined = metric(url, "intake_imap_quarantined_total")
                if taken + quarantined >= args.messages:
                    break
                if proc.poll() is not None or time.perf_counter() - started > 1800:
                    sys.exit(f"stopped at {taken:.0f}: {log.read_text(errors='replace')}")
                time.sleep(0.05)
            took = time.perf_counter() - started
            cpu = cpu_seconds(proc.pid)
            print(f"taken    {taken:.0f} in {took:.1f} s: {taken / took:.0f} msg/s   "
                  f"gateway CPU {cpu / max(taken, 1) * 1e6:.0f} µs/msg (incl. start-up and the "
                  f"acknowledgements sent meanwhile); quarantined {quarantined:.0f}", flush=True)
            while len(relay.messages) < taken and time.perf_counter() - started < 1800:
                time.sleep(0.1)
            print(f"acks     {len(relay.messages)} relayed, the last "
                  f"{time.perf_counter() - started - took:.1f} s after the last message was "
                  "taken", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
        out_ = subprocess.run([sys.executable, "-m", "gateway.cli", "tail", "--from-start",
                               "--data-dir", str(work / "data"), "--consumer", "bench"],
                              capture_output=True, text=True, check=True, cwd=ROOT, timeout=300)
        created = [json.loads(line)["subject"] for line in out_.stdout.splitlines()
                   if '"ticket.created"' in line]
        with dovecot.client() as imap:
            imap.select_folder("INBOX", readonly=True)
            unseen = len(imap.search(["UNSEEN"]))
        ok = len(created) == args.messages == len(set(created)) and unseen == 0
        print(f"store: {len(created)} tickets for {args.messages} messages, {unseen} left "
              f"unflagged ({'ok' if ok else 'MISMATCH'})")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
