"""The gate in Serve's HTTP proxy, so a stranger's request costs the cluster nothing past the headers.

Serve's proxy reads every request body into memory as it arrives and forwards the request to an
ingress replica; only then would the app's own gate answer `401`. Serve calls `middlewares` in each
proxy process when it is named by the environment of every Ray node:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.http.proxy:middlewares

(`PROXY_ENV` below; `python -m deployments.local`, the tests and the KubeRay manifest set it). The
proxy then answers `401`/`400` from the headers, cleans `X-Request-ID` before Serve reads or logs it,
and answers its own errors in JSON. The keys come from the cluster's key table (`storage.keys`), like the replicas'.
"""

from __future__ import annotations

import logging

from starlette.middleware import Middleware

from deployments.settings import ServiceSettings

from .auth import KeyRing, key_store
from .gate import Gate
from .wire import guarded

PROXY_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.http.proxy:middlewares"}

log = logging.getLogger("atelier.proxy")


def middlewares() -> list:
    """Serve's proxy callback: the list of Starlette middlewares its ASGI app is wrapped in."""
    _configure_uvicorn()
    ring: list[KeyRing] = []

    def keys() -> KeyRing:
        # Opened on first use, not while Serve starts the proxy; retried until it opens.
        if not ring:
            try:
                ring.append(KeyRing.open(key_store()))
            except Exception as exc:  # noqa: BLE001 - the store may not be reachable yet
                log.warning("the API key table is not readable yet (%s): keyed routes answer 401", exc)
                return KeyRing({})
        return ring[0]

    return [Middleware(Gate, keys=keys, json_errors=True, on_refusal=_refusal_counter())]


def _refusal_counter():
    """`atelier_gate_refusals{status, code}`: what the proxy's gate answers itself (a missing or
    unknown key, a bad header) never reaches a replica, so no replica's metric counts it."""
    counter: list = []

    def count(status: int, code: str) -> None:
        try:
            if not counter:
                from ray.util import metrics

                counter.append(metrics.Counter("atelier_gate_refusals", tag_keys=("status", "code"),
                                               description="Requests the HTTP proxy's gate refused from the headers"))
            counter[0].inc(tags={"status": str(status), "code": code})
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            pass

    return count


def uvicorn_options(settings: ServiceSettings | None = None) -> dict:
    """What the proxy's uvicorn is started with besides Serve's own options: no `server: uvicorn`
    header, and `X-Forwarded-For`/`X-Forwarded-Proto` believed only from `ATELIER_TRUSTED_PROXIES`
    (uvicorn's ProxyHeadersMiddleware), not from uvicorn's default of anyone on 127.0.0.1 (or its
    FORWARDED_ALLOW_IPS): with no trusted proxy, they are not read at all."""
    settings = settings or ServiceSettings()
    trusted = settings.trusted_proxies
    return {"server_header": False, "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None,
            # bounded, timed heads and JSON refusals of what is not a request (wire.py)
            "http": guarded(settings.max_head_bytes, settings.header_timeout_s)}


def _configure_uvicorn() -> None:
    """Start the proxy's uvicorn with `uvicorn_options()`.

    Serve builds `uvicorn.Config` itself after calling this callback and offers no option for these,
    so within the proxy process the Config it builds defaults to them. `tests/e2e/test_edge.py` checks
    the header is gone, so a Ray upgrade that stops this from applying fails there;
    tests/unit/http/test_privacy.py serves the app with these options on a real uvicorn.
    """
    import uvicorn

    if getattr(uvicorn.Config, "_atelier_quiet", False):
        return

    class QuietConfig(uvicorn.Config):
        _atelier_quiet = True

        def __init__(self, *args, **kwargs):
            for name, value in uvicorn_options().items():
                kwargs.setdefault(name, value)
            super().__init__(*args, **kwargs)

    uvicorn.Config = QuietConfig
