"""The plug-in contract, kept at its first address: everything is in :mod:`gateway.plugin`."""

from gateway.plugin.contract import (  # noqa: F401
    ADAPTER_GROUP,
    DRIVER_GROUP,
    PUBLISHER_GROUP,
    AckSender,
    Adapter,
    AdapterBase,
    AdapterContext,
    AdapterState,
    Inline,
    InlineOnPhone,
    Intake,
    IntakeLimits,
    Nobody,
    OutboundEvent,
    Outbox,
    Publisher,
    PublisherBase,
    Reply,
    check_adapter,
    check_publisher,
)
