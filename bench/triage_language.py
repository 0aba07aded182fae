"""CPU per message of the two pure steps of a new ticket: triage and language detection.

    taskset -c 0 .venv/bin/python bench/triage_language.py [--messages 4000] [--repeat 5]

Not a benchmark of the gateway (``run_all.py`` skips it): a micro-benchmark of
``Triager.classify`` (default rules) and ``gateway.language.with_language`` over realistic
messages in English and Chinese (the triage tests' corpus, each text made unique with a
reference number, some with a quoted reply or a signature as mail clients add them), against
baselines measured in the same run: a bare NFKC and casefold of the text (code no revision
changes, so it tells how fast the machine was), and ``normalize_for_dedup``, which intake's
fingerprint needs anyway. Each figure is the best of ``--repeat`` passes, in CPU µs per
message (``time.process_time``); every pass sees texts it has not seen before, so no cache is
warm across passes.

Also times ``with_language`` followed by ``content_fingerprint``, as ``IntakeService.submit``
runs them (language first, then the plan's fingerprint), since both look at the same text.
"""

from __future__ import annotations

import argparse
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.fingerprint import content_fingerprint, normalize_for_dedup
from gateway.triage import TriageConfig, Triager
from intake_schemas import Contact, InboundMessage

try:  # b7fad44 has no language step
    from gateway.language import with_language
except ImportError:
    with_language = None  # type: ignore[assignment]

try:
    from tests.test_triage import CORPUS
except ImportError:  # an older revision's tests: a few texts of each kind
    CORPUS = {"fault": {"en": ["The app crashes every time I open the settings page"],
                        "zh": ["路由器坏了，指示灯一直闪红"]},
              "consultation": {"en": ["What are your opening hours on public holidays?"],
                               "zh": ["订单一直没有发货，已经等了五天了，请帮忙查一下物流"]}}

QUOTE = {"en": "\n\nOn Mon, 23 Nov 2026 at 10:00, Support <support@example.com> wrote:\n"
               "> Thank you for contacting us.\n> Your ticket number is SO-1001.\n",
         "zh": "\n\n在 2026年11月23日 10:00，客服 <support@example.com> 写道：\n"
               "> 感谢您的来信。\n> 您的工单号是 SO-1001。\n"}
SIGNATURE = {"en": "\n\nBest regards,\nAlex\n-- \nAlex Chen | Example Ltd | +1 555 0100\n",
             "zh": "\n\n谢谢\n发自我的iPhone\n"}


def messages(n: int, salt: int) -> dict[str, list[InboundMessage]]:
    """``n`` messages per language, each text unique (``salt`` tells passes apart)."""
    out: dict[str, list[InboundMessage]] = {}
    for language in ("en", "zh"):
        texts = [t for by_language in CORPUS.values() for t in by_language.get(language, [])]
        batch = []
        for i in range(n):
            text = f"{texts[i % len(texts)]} (ref {salt}-{i})"
            if i % 4 == 1:
                text += QUOTE[language]
            elif i % 4 == 2:
                text += SIGNATURE[language]
            batch.append(InboundMessage(
                channel="email" if i % 2 else "api", received_at=datetime.now(UTC),
                contact=Contact(email=f"c{i}@example.org"), subject="" if i % 3 else "Help",
                text=text, locale="en" if i % 5 else None))
        out[language] = batch
    return out


def best(repeat: int, n: int, step: Callable[[Sequence[InboundMessage]], object],
         language: str) -> float:
    """Best CPU µs per message of ``step`` over ``repeat`` passes of fresh messages."""
    times = []
    for r in range(repeat):
        batch = messages(n, r)[language]
        started = time.process_time()
        step(batch)
        times.append(time.process_time() - started)
    return min(times) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=4000, help="per language")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    triager = Triager(TriageConfig())

    steps: dict[str, Callable[[Sequence[InboundMessage]], object]] = {
        "baseline: NFKC + casefold":
            lambda ms: [unicodedata.normalize("NFKC", m.text).casefold() for m in ms],
        "normalize_for_dedup(text)":
            lambda ms: [normalize_for_dedup(m.text) for m in ms],
        "Triager.classify": lambda ms: [triager.classify(m) for m in ms],
    }
    if with_language is not None:
        wl = with_language
        steps["with_language"] = lambda ms: [wl(m) for m in ms]
        steps["with_language + content_fingerprint"] = lambda ms: [
            content_fingerprint(m.subject, m.text) for m in map(wl, ms)]
    steps["content_fingerprint alone"] = lambda ms: [
        content_fingerprint(m.subject, m.text) for m in ms]

    print(f"{args.messages} messages per language, best of {args.repeat}; CPU µs per message")
    print(f"{'':40} {'en':>8} {'zh':>8}")
    for label, step in steps.items():
        en = best(args.repeat, args.messages, step, "en")
        zh = best(args.repeat, args.messages, step, "zh")
        print(f"{label:40} {en:8.2f} {zh:8.2f}")


if __name__ == "__main__":
    main()
