"""The gate in Serve's HTTP proxy, so a stranger's request costs the cluster nothing past the headers.

Serve's proxy reads every request body into memory as it arrives and forwards the request to an
ingress replica; only then would the app's own gate answer `401`. Serve calls `middlewares` in each
proxy process when it is named by the environment of every Ray node:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.http.proxy:middlewares

(`PROXY_ENV` below; `python -m deployments.local`, the tests and the KubeRay manifest set it). The
proxy then answers `401`/`400` from the headers, cleans `X-Request-ID` before Serve reads or logs it,
and answers its own errors in JSON. The keys come from `ATELIER_KEYS_FILE`, like the replicas'.
"""

from __future__ import annotations

import logging

PROXY_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.http.proxy:middlewares"}

log = logging.getLogger("atelier.proxy")


def middlewares() -> list:
    """Serve's proxy callback: the list of Starlette middlewares its ASGI app is wrapped in."""
    from starlette.middleware import Middleware

    from deployments.settings import ServiceSettings

    from .auth import KeyRing
    from .gate import Gate

    _quiet_server_header()
    path = ServiceSettings().keys_file
    ring: list[KeyRing] = []

    def keys() -> KeyRing:
        # Opened on first use: the proxy may start before the key file is written.
        if not ring:
            try:
                ring.append(KeyRing.load(path))
            except FileNotFoundError:
                log.warning("no API key file at %s yet: every keyed route answers 401", path)
                return KeyRing({})
        return ring[0]

    return [Middleware(Gate, keys=keys, json_errors=True)]


def _quiet_server_header() -> None:
    """Start the proxy's uvicorn without its `server: uvicorn` header.

    Serve builds `uvicorn.Config` itself after calling this callback and offers no option for the
    header, so within the proxy process the Config it builds defaults to `server_header=False`.
    `tests/e2e/test_edge.py` checks the header is gone, so a Ray upgrade that changes this fails there.
    """
    import uvicorn

    if getattr(uvicorn.Config, "_atelier_quiet", False):
        return

    class QuietConfig(uvicorn.Config):
        _atelier_quiet = True

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("server_header", False)
            super().__init__(*args, **kwargs)

    uvicorn.Config = QuietConfig
