"""How restyle's processes log: one console, one format for people or one for machines.

- `--log-format text` (default): `2026-11-30 18:05:41,242 INFO restyle.progress: ...`, one line
  per event, no colour codes unless stderr is a terminal;
- `--log-format json`: one JSON object per line with the key names of Ray's own structured logs
  (`asctime`, `levelname`, `name`, `message`, `filename`, `lineno`, plus the event's fields,
  e.g. the progress counts), for log collectors on a cluster; the actors' lines Ray forwards to
  the driver stay JSON too (no "(StylizeActor pid=...)" prefix).

Every line goes through `STDERR`, the one rich console of a command, so a log line printed while
the live progress display is up lands above it instead of being glued onto the bar. The driver
passes the same settings to its actors through their environment (`actor_env`), and quiets the
libraries' own chatter there: transformers' and the Hub's loading bars, Ray's token-auth notice
(shown again with `--log-level debug`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from enum import StrEnum

from rich.console import Console

STDERR = Console(stderr=True)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVEL_ENV = "RESTYLE_LOG_LEVEL"
FORMAT_ENV = "RESTYLE_LOG_FORMAT"
# Third-party progress bars and notices that mean nothing to an operator of a batch job.
QUIET_LIBRARIES_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' and diffusers' loading bars read it
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
QUIET_LOGGERS = ("ray._private.authentication",)  # "Token authentication is enabled ..."
# With JSON logs, the lines Ray forwards from actors must stay JSON: no "(Actor pid=...)" prefix,
# no "[repeated 3x across cluster]" suffix. Read by Ray when it is imported.
RAY_JSON_FORWARDING_ENV = {"RAY_DISABLE_WORKER_LOG_PREFIX": "1", "RAY_DEDUP_LOGS": "0"}
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; fields given with `extra=` ride along as keys."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "asctime": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "levelname": record.levelname,
            "name": record.name,
            "message": record.getMessage(),
            "filename": record.filename,
            "lineno": record.lineno,
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            data["exc_text"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class ConsoleHandler(logging.Handler):
    """Writes each record through the shared console (above a live progress display)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            STDERR.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def configure_logging(level: str | None = None, log_format: str | None = None) -> None:
    """Set up this process's logging (a command, or an actor reading `actor_env`). None: the
    value in $RESTYLE_LOG_LEVEL / $RESTYLE_LOG_FORMAT, else info / text."""
    level = LogLevel(level or os.environ.get(LEVEL_ENV) or LogLevel.INFO)
    log_format = LogFormat(log_format or os.environ.get(FORMAT_ENV) or LogFormat.TEXT)
    os.environ[LEVEL_ENV], os.environ[FORMAT_ENV] = level.value, log_format.value
    for name, value in QUIET_LIBRARIES_ENV.items():
        os.environ.setdefault(name, value)
    if log_format == LogFormat.JSON:
        os.environ.update(RAY_JSON_FORWARDING_ENV)
    handler = ConsoleHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == LogFormat.JSON else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.DEBUG if level == LogLevel.DEBUG else logging.ERROR
        )


def debugging() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def actor_env() -> dict[str, str]:
    """Environment for actors: this process's log settings, the libraries kept quiet."""
    env = {name: os.environ.get(name, value) for name, value in QUIET_LIBRARIES_ENV.items()}
    for name in (LEVEL_ENV, FORMAT_ENV):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def on_terminal() -> bool:
    return sys.stderr.isatty()
