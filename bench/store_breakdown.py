"""Where a new ticket's time goes inside the gateway: plan, each SQL statement, commit.

    .venv/bin/python bench/store_breakdown.py [--messages 5000] [--group 50]

Not a benchmark (``run_all.py`` skips it): a profile that explains ``api_intake.py``'s figure.
It builds the gateway's real ``IntakeService`` on a fresh data directory (nothing listens), then
in this one thread, without HTTP, the event loop or the writer thread:

1. times what ``IntakeService.submit`` runs before the store, validation aside, for N API
   messages, each a new contact with a new text: ``with_language`` (the message's language,
   where the revision has it) and then ``IntakeService._plan`` (triage, fingerprint, due
   time, numbers);
2. runs ``decide_and_record`` for those plans on a connection opened like the store's own
   (WAL, ``synchronous=FULL``), in groups of ``--group`` per ``BEGIN IMMEDIATE … COMMIT`` as
   the writer's group commit does, timing every statement by its SQL text.

Prints µs per ticket for the language, the plan, each statement, the COMMIT (fsync) and the
Python of ``decide_and_record`` outside SQL, in wall time; CPU time (``time.process_time``)
for language and plan together and for the whole. The data directory is deleted at the end.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.decision import decide_and_record
from gateway.runtime import Gateway
from gateway.store.sqlite import _SCHEMA, SqliteTx, connect
from intake_schemas import Contact, InboundMessage

try:  # IntakeService.submit decides the language before _plan
    from gateway.language import with_language
except ImportError:  # revisions before it (b7fad44) have no language step
    with_language = None  # type: ignore[assignment]

TEXTS = ("订单一直没有发货，已经等了五天了，请帮忙查一下物流",
         "The app crashes every time I open the settings page on my phone")


class TimedConnection:
    """The parts of ``sqlite3.Connection`` that ``SqliteTx`` uses, timed per SQL text."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.seconds: collections.Counter[str] = collections.Counter()

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        return self._timed(self.conn.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        return self._timed(self.conn.executemany, sql, *args)

    def _timed(self, call: Callable[..., sqlite3.Cursor], sql: str, *args: Any) -> sqlite3.Cursor:
        started = time.perf_counter()
        try:
            return call(sql, *args)
        finally:
            self.seconds[" ".join(sql.split())[:70]] += time.perf_counter() - started

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--group", type=int, default=50)
    args = parser.parse_args()
    n = args.messages

    work = Path(tempfile.mkdtemp(prefix="intake-breakdown-"))
    try:
        run(work, n, args.group)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, n: int, group: int) -> None:
    gw = Gateway(parse_config(""), work / "gw", listen="127.0.0.1:0")
    intake = gw.intake
    messages = [InboundMessage(channel="api", provider_message_id=None,
                               received_at=datetime.now(UTC),
                               contact=Contact(email=f"c{i}@example.org"),
                               text=f"{TEXTS[i % 2]} (ref {i})", locale="en")
                for i in range(n)]
    # One message after the other, language then plan, as submit runs them: the fingerprint
    # may reuse what the language step computed for the same text.
    cpu_started = time.process_time()
    language_s = plan_s = 0.0
    plans = []
    for m in messages:
        started = time.perf_counter()
        if with_language is not None:
            m = with_language(m)
        planned = time.perf_counter()
        plans.append(intake._plan(m, None, False))
        language_s += planned - started
        plan_s += time.perf_counter() - planned
    before_store_cpu = time.process_time() - cpu_started

    conn = connect(work / "breakdown.sqlite3")
    conn.executescript(_SCHEMA)
    timed = TimedConnection(conn)
    tx = SqliteTx(timed)  # type: ignore[arg-type]
    commit_s = 0.0
    started = time.perf_counter()
    for first in range(0, n, group):
        conn.execute("BEGIN IMMEDIATE")
        for plan in plans[first:first + group]:
            timed.execute("SAVEPOINT op")  # the writer isolates each op the same way
            decide_and_record(tx, plan, intake.numbering)
            timed.execute("RELEASE op")
        t = time.perf_counter()
        conn.execute("COMMIT")
        commit_s += time.perf_counter() - t
    decide_s = time.perf_counter() - started - commit_s
    cpu_s = time.process_time() - cpu_started
    sql_s = sum(timed.seconds.values())
    conn.close()

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:8.1f}"

    print(f"{n} new tickets, groups of {group}; µs per ticket (wall unless CPU is said)")
    if with_language is not None:
        print(f"{us(language_s)}  language (with_language, in submit before _plan)")
    print(f"{us(plan_s)}  plan (IntakeService._plan)")
    print(f"{us(before_store_cpu)}  CPU of the two above (process_time)")
    for sql, seconds in timed.seconds.most_common():
        print(f"{us(seconds)}  SQL {sql}")
    print(f"{us(sql_s)}  SQL in all")
    print(f"{us(decide_s - sql_s)}  decide_and_record outside SQL (Python)")
    print(f"{us(commit_s)}  COMMIT (fsync), amortised over the group")
    print(f"{us(language_s + plan_s + decide_s + commit_s)}  total (wall)")
    print(f"{us(cpu_s)}  total CPU (process_time, same span)")


if __name__ == "__main__":
    main()
