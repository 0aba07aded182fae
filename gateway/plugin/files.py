"""Files an adapter keeps under the data directory (a quarantine) that must survive a crash.

State every replica needs belongs in :attr:`AdapterContext.state`; files are for what an
operator inspects on this machine.
"""

from __future__ import annotations

from gateway.files import write_durably

__all__ = ["write_durably"]
