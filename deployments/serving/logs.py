"""Logs of the deployments: JSON lines in each replica's Serve log, with the request id and route.

Serve writes a replica's log (`/tmp/ray/session_latest/logs/serve/replica_<app>_<deployment>_*.log`)
through its `ray.serve` logger, which adds the request id, route, application and replica of the
request being served. `LOGGING` below makes those lines JSON. The service's own loggers (`atelier.*`)
would otherwise reach only the worker's stderr (`worker-*.err`); `into_serve_log()` hands their
records to Serve's handlers, so a warning lands beside the request it belongs to.

The Ingress logs one access line per request itself (`atelier.access`: method, route template,
status and latency as JSON fields) instead of Serve's access line, whose status and latency are only
text. Nothing logs a header, so a key never reaches a log; a 4xx is that one line, no traceback.
A model replica that refuses a caller's input logs one WARNING line with the request id, never
Serve's ERROR "Request failed." with a traceback: an alert on ERROR lines fires on our faults only.
"""

from __future__ import annotations

import logging

from models.errors import ModelError
from storage.errors import AtelierError

# Serve's LoggingConfig, as a dict: JSON lines, and the logger's name on each.
LOGGING = {"encoding": "JSON", "log_level": "INFO", "additional_log_standard_attrs": ["name"]}
# The Ingress writes its own access line (atelier.access), with status and latency as fields.
INGRESS_LOGGING = {**LOGGING, "enable_access_log": False}


class _ToServe(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("ray.serve").handle(record)


class _RefusalsAreWarnings(logging.Filter):
    """Serve logs whatever a replica's method raises as ERROR "Request failed." with its traceback, then
    an access line with status ERROR. A typed error with a 4xx status is the caller's mistake (a refused
    input, a cancelled call), not our fault: it becomes one WARNING line naming the error, without the
    traceback, and the access line of that request is left out. Other errors stay as Serve logs them."""

    def __init__(self):
        super().__init__()
        self._refused: str | None = None  # the request id of the last refusal (a replica logs in order)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "serve_access_log", False) and self._refused is not None:
            refused, self._refused = self._refused, None
            return getattr(record, "request_id", None) != refused
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and isinstance(exc, (ModelError, AtelierError)) and exc.status < 500:
            from ray.serve.context import _get_serve_request_context

            self._refused = _get_serve_request_context().request_id or None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "Request refused: %s %s (field %s): %s", (
                exc.status, exc.code, exc.field or "-", exc.message)
            record.exc_info, record.exc_text = None, None
        return True


def into_serve_log() -> None:
    """Send the `atelier` loggers' records to this replica's Serve log, and log refused input as a
    warning (once per process)."""
    serve_log = logging.getLogger("ray.serve")
    if not any(isinstance(f, _RefusalsAreWarnings) for f in serve_log.filters):
        serve_log.addFilter(_RefusalsAreWarnings())
    app = logging.getLogger("atelier")
    if not any(isinstance(h, _ToServe) for h in app.handlers):
        app.addHandler(_ToServe())
        app.setLevel(logging.INFO)
        app.propagate = False
