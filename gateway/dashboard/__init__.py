"""The operators' dashboard: what the gateway has taken in, served by the gateway itself.

- :mod:`.summary` reads one snapshot through the store's ``DashboardReads``;
- :mod:`.charts` draws it as server-side SVG (no chart library, no CDN);
- :mod:`.regions` turns phone numbers into provinces or countries;
- :mod:`.access` decides who may look; :mod:`.pages` serves it; :mod:`.actions` replays.
"""

from gateway.dashboard.pages import Dashboard

__all__ = ["Dashboard"]
