"""Stores: where tickets, messages, the ack outbox and the event outbox live.

``sqlite`` is the embedded default (one writer thread, group commit); ``postgres`` serves several
replicas. Both run the same decision code (:mod:`gateway.decision`) against the :class:`Tx`
protocol, so the four outcomes mean the same everywhere.
"""
