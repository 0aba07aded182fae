"""Where a new ticket's time goes inside the gateway: plan, each SQL statement, commit.

    .venv/bin/python bench/store_breakdown.py [--messages 5000] [--group 50]

Not a benchmark (``run_all.py`` skips it): a profile that explains ``api_intake.py``'s figure.
It builds the gateway's real ``IntakeService`` on a fresh data directory (nothing listens), then
in this one thread, without HTTP, the event loop or the writer thread:

1. times ``IntakeService._plan`` (validation aside: triage, fingerprint, due time, numbers) for
   N API messages, each a new contact with a new text;
2. runs ``decide_and_record`` for those plans on a connection opened like the store's own
   (WAL, ``synchronous=FULL``), in groups of ``--group`` per ``BEGIN IMMEDIATE … COMMIT`` as
   the writer's group commit does, timing every statement by its SQL text.

Prints µs per ticket for the plan, for each statement, for the COMMIT (fsync) and for the
Python of ``decide_and_record`` outside SQL.
"""

from __future__ import annotations

import argparse
import collections
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
from schemas import Contact, InboundMessage

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
    gw = Gateway(parse_config(""), work / "gw", listen="127.0.0.1:0")
    intake = gw.intake
    messages = [InboundMessage(channel="api", provider_message_id=None,
                               received_at=datetime.now(UTC),
                               contact=Contact(email=f"c{i}@example.org"),
                               text=f"{TEXTS[i % 2]} (ref {i})", locale="en")
                for i in range(n)]
    started = time.perf_counter()
    plans = [intake._plan(m, None, False) for m in messages]
    plan_s = time.perf_counter() - started

    conn = connect(work / "breakdown.sqlite3")
    conn.executescript(_SCHEMA)
    timed = TimedConnection(conn)
    tx = SqliteTx(timed)  # type: ignore[arg-type]
    commit_s = 0.0
    started = time.perf_counter()
    for first in range(0, n, args.group):
        conn.execute("BEGIN IMMEDIATE")
        for plan in plans[first:first + args.group]:
            timed.execute("SAVEPOINT op")  # the writer isolates each op the same way
            decide_and_record(tx, plan, intake.numbering)
            timed.execute("RELEASE op")
        t = time.perf_counter()
        conn.execute("COMMIT")
        commit_s += time.perf_counter() - t
    decide_s = time.perf_counter() - started - commit_s
    sql_s = sum(timed.seconds.values())

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:8.1f}"

    print(f"{n} new tickets, groups of {args.group}; µs per ticket")
    print(f"{us(plan_s)}  plan (IntakeService._plan)")
    for sql, seconds in timed.seconds.most_common():
        print(f"{us(seconds)}  SQL {sql}")
    print(f"{us(sql_s)}  SQL in all")
    print(f"{us(decide_s - sql_s)}  decide_and_record outside SQL (Python)")
    print(f"{us(commit_s)}  COMMIT (fsync), amortised over the group")
    conn.close()


if __name__ == "__main__":
    main()
