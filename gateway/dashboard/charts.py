"""Server-side SVG charts: stacked bars over time and horizontal bars for a mix.

Pure functions from numbers to SVG text, so the page needs no chart library and no script to
draw; every label is escaped. Each bar carries ``data-value`` so tests and scripts can read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
"""Colours in order of first use (the well-known Tableau 10)."""

CHANNEL_COLOURS = {"api": "#1f77b4", "webform": "#ff7f0e", "smtp": "#2ca02c", "imap": "#98df8a",
                   "twilio": "#d62728", "sms": "#d62728", "whatsapp": "#9467bd",
                   "voice": "#8c564b", "telegram": "#17becf", "wechat": "#bcbd22",
                   "webhook": "#e377c2"}
"""A channel keeps its colour in every chart and on every page (adapter kinds)."""


def colour_for(name: str, index: int) -> str:
    return CHANNEL_COLOURS.get(name, PALETTE[index % len(PALETTE)])


def stacked_bars(series: Mapping[str, Sequence[int]], labels: Sequence[str], *,
                 title: str, width: int = 640, height: int = 220) -> str:
    """One bar per label, stacked by series (e.g. channel); a legend below."""
    pad_l, pad_b, pad_t = 36, 22, 8
    names = [n for n in series if any(series[n])]
    totals = [sum(series[n][i] for n in names) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    plot_w, plot_h = width - pad_l - 4, height - pad_b - pad_t
    step = plot_w / max(1, len(labels))
    bar_w = max(2.0, step * 0.72)
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" '
             f'viewBox="0 0 {width} {height + 24 + 16 * ((len(names) - 1) // 5)}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 4}" y2="{pad_t + plot_h}" '
             'stroke="#9aa4b1"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end" class="axis">{top}</text>',
             f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end" class="axis">0</text>']
    every = max(1, len(labels) // 6)
    for i, label in enumerate(labels):
        x = pad_l + i * step + (step - bar_w) / 2
        y = float(pad_t + plot_h)
        for j, name in enumerate(names):
            value = series[name][i]
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{colour_for(name, j)}" '
                         f'data-series="{escape(name)}" data-value="{value}">'
                         f'<title>{escape(name)} {escape(label)}: {value}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                         f'class="axis">{escape(label)}</text>')
    for j, name in enumerate(names):
        lx, ly = pad_l + (j % 5) * 120, height + 12 + 16 * (j // 5)
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" '
                     f'fill="{colour_for(name, j)}"/><text x="{lx + 14}" y="{ly}" '
                     f'class="legend">{escape(name)} ({sum(series[name])})</text>')
    if not names:
        parts.append(f'<text x="{width / 2}" y="{pad_t + plot_h / 2}" text-anchor="middle" '
                     'class="empty">nothing received yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def hbars(items: Sequence[tuple[str, int]], *, title: str, colour: str | None = None,
          colours: Mapping[str, str] | None = None, width: int = 420) -> str:
    """Horizontal bars, one per (label, value), longest first as given."""
    row, label_w = 22, 150
    top = max((v for _, v in items), default=0) or 1
    height = max(row, row * len(items)) + 4
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        w = (width - label_w - 50) * value / top
        fill = (colours or {}).get(label) or colour or PALETTE[i % len(PALETTE)]
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" class="label">'
                     f'{escape(label[:28])}</text>')
        if value:
            parts.append(f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
                         f'height="{row - 6}" fill="{fill}" data-series="{escape(label)}" '
                         f'data-value="{value}"><title>{escape(label)}: {value}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" class="value">{value}'
                     "</text>")
    if not items:
        parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" class="empty">'
                     "none yet</text>")
    parts.append("</svg>")
    return "".join(parts)
