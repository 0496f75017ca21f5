"""Logging set-up for the command lines (``edgecollab``, ``edgecollab-worker``): levels from ``-v``, and one
JSON object per line with ``--log-json``."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone


class JsonLines(logging.Formatter):
    """``{"ts", "level", "logger", "pid", "message"[, "exception"]}`` per record, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(verbosity: int, json_lines: bool) -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv; on stderr."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLines() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The state machine logs every callback at INFO; its transitions are logged by the resource manager.
    logging.getLogger("transitions").setLevel(max(level, logging.WARNING))
