"""PII scrubbing: e-mail addresses, phone numbers and IP addresses become replacement tokens.

Regular expressions find candidates; IP addresses are validated with ``ipaddress`` (and,
by default, private / loopback / reserved ones are kept: they identify no one). Every
replacement is counted by kind. Names, street addresses and keys are not detected.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Iterator

from intern_jax.data.processing.config import PiiConfig
from intern_jax.data.processing.documents import Document, StageStats

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])", re.ASCII)
# +country code with grouped digits, North-American (xxx) xxx-xxxx, and Chinese mobile numbers.
PHONE = re.compile(
    r"""(?<![\w+.])(?:
        \+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,3}
      | \(\d{3}\)\s?\d{3}[\s.-]\d{4}
      | \d{3}[.-]\d{3}[.-]\d{4}
      | 1[3-9]\d{9}
    )(?![\w.]?\d)""",
    re.VERBOSE | re.ASCII,
)
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]?\d)", re.ASCII)
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])", re.ASCII)


def _ip_replacer(token: str, keep_private: bool, counter: list[int]):
    def replace(m: re.Match) -> str:
        if not any(c.isdigit() for c in m.group(0)):  # 'a::b', 'dead::beef': names, not addresses
            return m.group(0)
        try:
            ip = ipaddress.ip_address(m.group(0))
        except ValueError:
            return m.group(0)
        if keep_private and not ip.is_global:
            return m.group(0)
        counter[0] += 1
        return token

    return replace


def scrub_text(text: str, cfg: PiiConfig) -> tuple[str, dict[str, int]]:
    """Text with PII replaced, and how many of each kind were replaced."""
    text, emails = EMAIL.subn(cfg.email_token, text)
    ips = [0]
    text = IPV6.sub(_ip_replacer(cfg.ip_token, cfg.keep_private_ips, ips), text)
    text = IPV4.sub(_ip_replacer(cfg.ip_token, cfg.keep_private_ips, ips), text)
    text, phones = PHONE.subn(cfg.phone_token, text)
    return text, {"email": emails, "phone": phones, "ip_address": ips[0]}


def scrub_pii(docs: Iterable[Document], cfg: PiiConfig, stats: StageStats) -> Iterator[Document]:
    if not cfg.enabled:
        stats.off = "pii.enabled=False"
    for doc in docs:
        t0 = time.perf_counter()
        stats.seen(doc)
        if cfg.enabled:
            doc.text, found = scrub_text(doc.text, cfg)
            stats.counts.update({k: v for k, v in found.items() if v})
            if any(found.values()):
                stats.counts["documents_changed"] += 1
        stats.seconds += time.perf_counter() - t0
        stats.kept(doc)
        yield doc
