"""The acknowledgement languages the core has, and which of them a language tag reads best.

For adapters that choose a page's language themselves (the web form's ``?lang=`` and
``Accept-Language``) before any message exists; :meth:`Intake.render_ack` and
:meth:`Intake.format_due` apply the same choice to any tag they are given.
"""

from __future__ import annotations

from gateway.acks import pick_locale

__all__ = ["pick_locale"]
