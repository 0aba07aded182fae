"""The plug-in contract refuses wrong declarations when a plug-in is loaded."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest

from gateway.errors import ConfigError
from gateway.plugin import (
    ADAPTER_GROUP,
    PUBLISHER_GROUP,
    AdapterBase,
    PublisherBase,
    check_adapter,
    check_publisher,
)
from gateway.registry import load_plugins


class _Options(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False


def test_every_installed_plugin_passes_its_check() -> None:
    # load_plugins runs the checks: a built-in that declared something wrong fails here.
    assert set(load_plugins(ADAPTER_GROUP)) >= {"api", "webform", "smtp", "imap", "mailer",
                                                "twilio", "telegram", "wechat", "webhook"}
    assert set(load_plugins(PUBLISHER_GROUP)) >= {"embedded", "nats", "rabbitmq", "redis",
                                                  "webhook"}


def test_an_adapter_must_subclass_the_base() -> None:
    class Loose:
        kind: ClassVar[str] = "loose"
        Config = _Options

    with pytest.raises(ConfigError, match="must subclass"):
        check_adapter(Loose)


def test_an_adapter_config_needs_enabled_and_must_refuse_unknown_keys() -> None:
    class NoEnabled(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        path: str = "/x"

    class Lax(msgspec.Struct, frozen=True):
        enabled: bool = True

    class A(AdapterBase):
        kind: ClassVar[str] = "a"
        Config = NoEnabled

    class B(AdapterBase):
        kind: ClassVar[str] = "b"
        Config = Lax

    with pytest.raises(ConfigError, match="enabled"):
        check_adapter(A)
    with pytest.raises(ConfigError, match="forbid unknown fields"):
        check_adapter(B)


def test_an_adapter_declaring_ack_channels_must_send() -> None:
    class Mute(AdapterBase):
        kind: ClassVar[str] = "mute"
        Config = _Options
        ack_channels: ClassVar[tuple[str, ...]] = ("sms",)

    class Speaks(Mute):
        async def send_ack(self, ack, *, to, reply_to):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(ConfigError, match="send_ack"):
        check_adapter(Mute)
    check_adapter(Speaks)


def test_a_publisher_that_needs_a_relay_must_publish() -> None:
    class Silent(PublisherBase):
        kind: ClassVar[str] = "silent"
        Config = _Options

    class Embedded(Silent):
        relay_needed: ClassVar[bool] = False

    with pytest.raises(ConfigError, match="publish"):
        check_publisher(Silent)
    check_publisher(Embedded)
