"""``intake-gateway serve | check-config | schema | tail | replay | reply | migrate | purge``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from gateway.config import Config, load_config
from gateway.errors import ConfigError, TransientError
from gateway.jsonlog import configure_logging
from gateway.logs import install_log_guards

if TYPE_CHECKING:
    from gateway.store.protocols import DeadLetters

DEFAULT_DATA_DIR = "./intake-data"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    common.add_argument("--data-dir", metavar="DIR", default=DEFAULT_DATA_DIR,
                        help=f"where the store and attachments live (default {DEFAULT_DATA_DIR})")
    common.add_argument("--log-format", choices=("auto", "json", "text"),
                        default=os.environ.get("INTAKE_LOG_FORMAT", "auto"),
                        help="log lines as JSON or text (default auto: text on a terminal, "
                             "JSON otherwise; or $INTAKE_LOG_FORMAT)")
    p = argparse.ArgumentParser(prog="intake-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--listen", metavar="HOST:PORT", help="HTTP listener (default from "
                       "config, 127.0.0.1:8080)")
    sub.add_parser("check-config", parents=[common], help="validate the config and exit")
    schema = sub.add_parser("schema", parents=[common],
                            help="print or write the JSON Schemas, AsyncAPI and OpenAPI")
    schema.add_argument("--out", metavar="DIR", help="write one file per schema into DIR")
    tail = sub.add_parser("tail", parents=[common], help="print queued events as JSON lines")
    tail.add_argument("--consumer", default="default",
                      help="named consumer whose position persists (default: 'default')")
    tail.add_argument("--from-start", action="store_true", help="start at the first event")
    tail.add_argument("--follow", "-f", action="store_true", help="wait for new events")
    tail.add_argument("--max", type=int, default=0, help="stop after this many events")
    replay = sub.add_parser("replay", parents=[common],
                            help="list or re-publish dead-lettered events")
    replay.add_argument("--list", action="store_true", help="only list them")
    from gateway.replies.command import add_arguments as reply_arguments
    reply_arguments(sub.add_parser("reply", parents=[common],
                                   help="answer a ticket's customer on their channel"))
    sub.add_parser("migrate", parents=[common],
                   help="bring the store's schema to this version (once per upgrade)")
    sub.add_parser("purge", parents=[common],
                   help="remove raw bodies and files past [retention] (records kept as set)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_format)
    # Before any secret is read or any library logs: redaction, quiet libraries, throttling.
    install_log_guards()
    try:
        config = load_config(args.config)
        if args.command == "serve":
            return _serve(config, args)
        if args.command == "check-config":
            return _check(config, args)
        if args.command == "schema":
            return _schema(args.out)
        if args.command == "tail":
            return _tail(args, config)
        if args.command == "replay":
            return asyncio.run(_replay(config, args))
        if args.command == "reply":
            from gateway.replies.command import run as reply
            return reply(config, args)
        if args.command == "migrate":
            return _migrate(config, args)
        if args.command == "purge":
            return _purge(config, args)
    except ConfigError as exc:
        print(f"intake-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _serve(config: Config, args: argparse.Namespace) -> int:
    from gateway.runtime import Gateway, serve

    gw = Gateway(config, args.data_dir, listen=args.listen)
    asyncio.run(serve(gw))
    return 0


def _check(config: Config, args: argparse.Namespace) -> int:
    from gateway.plugin.settings import collecting_missing_secrets
    from gateway.runtime import Gateway

    with collecting_missing_secrets() as missing:
        gw = Gateway(config, args.data_dir)
    kinds = ", ".join(a.kind for a in gw.adapters) or "none"
    print(f"config OK: listen {gw.listen}, store {config.store.backend}, "
          f"queue {config.queue.backend}, adapters: {kinds}")
    for key, env in missing:
        # The file is right; what `serve` still needs from the deployment.
        print(f"to set before serve: ${env} ({key}; or {key}_file)")
    return 0


def _migrate(config: Config, args: argparse.Namespace) -> int:
    from gateway.store.migrate import migrate_store

    try:
        backend, before, after = migrate_store(config.store, Path(args.data_dir))
    except TransientError as exc:
        print(f"intake-gateway: migrate failed: {exc}", file=sys.stderr)
        return 1
    done = "already current" if before == after else f"migrated from {before}"
    print(f"{backend} store at schema {after} ({done})")
    return 0


def _purge(config: Config, args: argparse.Namespace) -> int:
    from gateway.store.retention import purge_configured

    try:
        r = purge_configured(config, Path(args.data_dir))
    except TransientError as exc:
        print(f"intake-gateway: purge failed: {exc}", file=sys.stderr)
        return 1
    print(f"purged: {r.bodies} message bodies, {r.files} files, {r.tickets} tickets, "
          f"{r.messages} messages, {r.contacts} contacts, {r.events} events")
    return 0


def _schema(out: str | None) -> int:
    from gateway.openapi import committed_document
    from intake_schemas.export import export_schemas

    docs = {**export_schemas(), "openapi": committed_document()}
    if out is None:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(docs), indent=2) + b"\n")
        return 0
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (folder / f"{name}.json").write_bytes(msgspec.json.format(msgspec.json.encode(doc),
                                                                  indent=2) + b"\n")
    return 0


def _tail(args: argparse.Namespace, config: Config) -> int:
    from gateway.store.protocols import ConsumerOffsets, EventReader
    from gateway.store.sqlite import STORE_FILE, SqliteStore

    events: EventReader
    if config.store.backend == "postgres":
        from gateway.store.backends import postgres_dsn
        from gateway.store.postgres import PostgresEventReader

        # Positions live in the database: a consumer keeps its place on any machine.
        events = PostgresEventReader(postgres_dsn(config.store))
    else:
        data_dir = Path(args.data_dir)
        db_path = Path(config.store.path) if config.store.path else data_dir / STORE_FILE
        while not db_path.exists():
            if not args.follow:
                print(f"intake-gateway: no store at {db_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        # Read-only: reading what was taken in must work on a full disk or a read-only mount.
        events = SqliteStore(db_path).event_reader()
    offsets: ConsumerOffsets | None
    try:
        offsets = events.consumer_offsets()
    except TransientError as exc:
        print(f"intake-gateway: positions are not kept ({exc}); reading anyway", file=sys.stderr)
        offsets = None
    saved = None
    if offsets is not None and not args.from_start:
        saved = offsets.position(args.consumer)
    position = 0 if args.from_start or saved is None else saved
    out = sys.stdout.buffer
    printed = 0
    while True:
        rows = events.events_after(position, 500)
        if args.max:
            rows = rows[: args.max - printed]
        for _seq, body in rows:
            out.write(body + b"\n")
        if rows:
            out.flush()
            # Commit the position only after the lines are out: at least once, never skipped.
            position = rows[-1][0]
            printed += len(rows)
            if offsets is not None:
                try:
                    offsets.save(args.consumer, position)
                except TransientError as exc:
                    print(f"intake-gateway: the position is not saved: {exc}", file=sys.stderr)
                    offsets = None
        if args.max and printed >= args.max:
            return 0
        if not rows:
            if not args.follow:
                return 0
            time.sleep(0.25)


async def _replay(config: Config, args: argparse.Namespace) -> int:
    from gateway.store.backends import open_configured_store

    # The whole store, writer and all: each re-published event leaves the table durably.
    store = open_configured_store(config.store, Path(args.data_dir))
    await store.open()
    try:
        return await _replay_from(store, config, args)
    finally:
        await store.close()


async def _replay_from(store: DeadLetters, config: Config, args: argparse.Namespace) -> int:
    from gateway.config import convert_section
    from gateway.errors import IntakeError
    from gateway.plugin import PUBLISHER_GROUP
    from gateway.registry import load_plugin
    from gateway.relay import replay_dead_letters

    backend = config.queue.backend
    letters = await store.dead_letters(backend)
    for event, attempts, error in letters:
        print(f"seq {event.seq}\t{event.type}\t{event.subject}\t{attempts} attempts\t{error}")
    if args.list or not letters:
        print(f"{len(letters)} dead-lettered event(s) for {backend}", file=sys.stderr)
        return 0
    cls = load_plugin(PUBLISHER_GROUP, backend)
    publisher = cls(convert_section(config.queue.settings, cls.Config, where="queue.settings"))
    try:
        await publisher.start()
        # In sequence order; a ticket's held events only after its first (gateway/relay.py).
        done, left = await replay_dead_letters(
            store, publisher, backend, max_event_bytes=config.queue.max_event_bytes,
            report=lambda line: print(line, file=sys.stderr))
    except IntakeError as exc:
        print(f"intake-gateway: replay stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        await publisher.close()
    print(f"re-published {done} event(s) to {backend}; {left} left", file=sys.stderr)
    return 0 if left == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
