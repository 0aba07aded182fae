"""What the dashboard's buttons do: re-publish dead letters, replay quarantined mail."""

from __future__ import annotations

from gateway.config import Config, convert_section
from gateway.errors import IntakeError
from gateway.plugin import PUBLISHER_GROUP
from gateway.registry import load_plugin
from gateway.relay import replay_dead_letters
from gateway.store.protocols import DeadLetters


async def replay_dead_letters_now(store: DeadLetters, config: Config) -> str:
    """As ``intake-gateway replay`` does, with a publisher of its own (the relay keeps its)."""
    backend = config.queue.backend
    cls = load_plugin(PUBLISHER_GROUP, backend)
    publisher = cls(convert_section(config.queue.settings, cls.Config, where="queue.settings"))
    refused: list[str] = []
    try:
        await publisher.start()
        done, left = await replay_dead_letters(
            store, publisher, backend, max_event_bytes=config.queue.max_event_bytes,
            report=refused.append)
    except IntakeError as exc:
        return f"replay stopped: {exc}"
    finally:
        await publisher.close()
    note = f"re-published {done} dead-lettered event(s) to {backend}; {left} left"
    return note + (f" ({refused[0]})" if refused else "")
