"""Logs of the deployments: JSON lines in each replica's Serve log, with the request id and route.

Serve writes a replica's log (`/tmp/ray/session_latest/logs/serve/replica_<app>_<deployment>_*.log`)
through its `ray.serve` logger, which adds the request id, route, application and replica of the
request being served. `LOGGING` below makes those lines JSON. The service's own loggers (`atelier.*`)
would otherwise reach only the worker's stderr (`worker-*.err`); `into_serve_log()` hands their
records to Serve's handlers, so a warning lands beside the request it belongs to.

The Ingress logs one access line per request itself (`atelier.access`: method, route template,
status and latency as JSON fields) instead of Serve's access line, whose status and latency are only
text. Nothing logs a header, so a key never reaches a log; a 4xx is that one line, no traceback.
"""

from __future__ import annotations

import logging

# Serve's LoggingConfig, as a dict: JSON lines, and the logger's name on each.
LOGGING = {"encoding": "JSON", "log_level": "INFO", "additional_log_standard_attrs": ["name"]}
# The Ingress writes its own access line (atelier.access), with status and latency as fields.
INGRESS_LOGGING = {**LOGGING, "enable_access_log": False}


class _ToServe(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("ray.serve").handle(record)


def into_serve_log() -> None:
    """Send the `atelier` loggers' records to this replica's Serve log (once per process)."""
    app = logging.getLogger("atelier")
    if not any(isinstance(h, _ToServe) for h in app.handlers):
        app.addHandler(_ToServe())
        app.setLevel(logging.INFO)
        app.propagate = False
