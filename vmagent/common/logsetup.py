"""Logging set-up: journald under systemd (systemd-python), plain stderr elsewhere."""

from __future__ import annotations

import logging
import os
import re
import sys

_SECRET_RE = re.compile(r"(?i)(bearer\s+|token[=: ]+|--token\s+)[A-Za-z0-9._~+/=-]{8,}")


class RedactingFilter(logging.Filter):
    """Masks bearer tokens and join tokens that would otherwise reach a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        redacted = _SECRET_RE.sub(lambda m: m.group(1) + "[redacted]", msg)
        if redacted != msg:
            record.msg, record.args = redacted, None
        return True


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID")) and bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(name: str, level: str = "info") -> None:
    """Send the root logger to journald when run by systemd, else to stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if under_systemd():
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER=name)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
