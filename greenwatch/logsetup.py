"""Where the services' log goes and in what shape: stderr or a file, text or JSON lines.

Under systemd, stderr goes to the journal, which stamps every line itself; a site that ships
logs to Loki, Elasticsearch or Splunk wants one JSON object per line instead, and a host without
journald wants a file that logrotate can rotate.  :func:`configure_logging` sets that up once for
the root logger, from the ``--log-level``, ``--log-format`` and ``--log-file`` options.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

__all__ = ["FORMATS", "JsonFormatter", "LogSetupError", "configure_logging"]

FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Name of the handler configure_logging installs, so that a second call replaces it.
HANDLER_NAME = "greenwatch"


class LogSetupError(RuntimeError):
    """The log file cannot be opened (missing directory, no permission)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
    ``message``, and ``exception`` with the formatted traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (newlines in the message are escaped, never split)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text", file: Path | None = None) -> None:
    """Send every log record at ``level`` or above to ``file`` (appended; stderr when None) as ``fmt``.

    A file is opened with :class:`logging.handlers.WatchedFileHandler`, which reopens it when
    logrotate has moved it away, so rotation needs neither a signal nor ``copytruncate``.
    Raises :class:`LogSetupError` when the file cannot be opened.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    if file is None and fmt == "text":
        # What logging.basicConfig does: a host that already routes the root logger (an embedding
        # program, pytest's capture) keeps its handlers.
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler()
    else:
        try:
            handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        except OSError as exc:
            raise LogSetupError(f"cannot open log file {file}: {exc.strerror or exc}") from None
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name(HANDLER_NAME)
    # Asked for explicitly, so it replaces the stderr handler a second call (or basicConfig) left,
    # but not handlers someone else attached.
    for old in list(root.handlers):
        if old.get_name() == HANDLER_NAME or (type(old) is logging.StreamHandler and old.stream is sys.stderr):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
