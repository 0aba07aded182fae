"""Stores: where tickets, messages, the ack outbox and the event outbox live.

``sqlite`` is the embedded default (one writer thread, group commit); ``postgres`` serves several
replicas. Every SQL statement lives here; the core reaches a store only through the small protocols
of :mod:`gateway.store.protocols` (the decision's ``Tx``, the ack outbox, the event log and
consumer offsets, relay positions and dead letters, adapter state, replay guards), and
:mod:`gateway.testing.store_contract` holds every store to them. Both run the same decision code
(:mod:`gateway.decision`), so the four outcomes mean the same everywhere.
"""
