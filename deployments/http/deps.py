"""What every router asks of a request: the service, the edge's helpers, the caller, and answer shapes."""

from __future__ import annotations

from fastapi import Request

from deployments.service import ProductService

from .edge import Edge, current_request_id
from .auth import Unauthorized

__all__ = ["caller", "current_request_id", "edge", "image_url", "public_root", "record_out", "service"]


def service(request: Request) -> ProductService:
    return request.app.state.service


def edge(request: Request) -> Edge:
    return request.app.state.edge


def caller(request: Request) -> str:
    """The user id of the request's bearer key, as the gate in front of every route found it (401 otherwise)."""
    user = (request.scope.get("state") or {}).get("user")
    if user is None:
        raise Unauthorized("send `Authorization: Bearer <key>`")
    return user


def public_root(request: Request) -> str:
    """The base of the absolute URLs we return: the configured public URL, else the local address the
    connection arrived at (Serve's proxy's socket), never the client's `Host` header. The scheme is the
    connection's, which Serve's proxy takes from `X-Forwarded-Proto` only from a trusted proxy (proxy.py)."""
    base = edge(request).public_url
    if base is None:
        scheme = request.scope.get("scheme", "http")
        host, port = request.scope.get("server") or ("127.0.0.1", None)
        host = f"[{host}]" if ":" in str(host) else host
        default = {"http": 80, "https": 443}.get(scheme)
        base = f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")
    return base + request.scope.get("root_path", "")


def image_url(request: Request, user_id: str, img_id: str) -> str:
    """The signed, expiring URL of an image's display copy, absolute (API.md): clients, and the
    official openai client, download it without knowing our base URL."""
    token = edge(request).signer.sign(user_id, img_id)
    return f"{public_root(request)}/api/images/{img_id}/file?sig={token}"


def record_out(request: Request, user_id: str, row: dict) -> dict:
    """A gallery row as the API shows it."""
    out = {k: row.get(k) for k in ("img_id", "width", "height", "content_hash", "caption", "description", "post_text",
                                   "source")}
    created = row.get("created_at")
    out["created_at"] = created.isoformat() if hasattr(created, "isoformat") else created
    out["image_url"] = image_url(request, user_id, row["img_id"])
    # The Guard's verdict on the picture (issue 30): categories it flagged, scores, model; null when unchecked.
    out["safety"] = (row.get("meta") or {}).get("safety")
    return out
