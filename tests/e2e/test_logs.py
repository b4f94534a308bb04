"""Logs (issue 13): JSON lines in the replica's Serve log with the request id, route, status and latency;
a user's 4xx is one line without a traceback; no key is ever logged."""

from __future__ import annotations

import uuid


from tests.conftest import serve_log_records



def test_each_request_is_one_json_line_with_id_route_status_and_latency(service):
    ok, missing = f"logs-ok-{uuid.uuid4().hex[:8]}", f"logs-404-{uuid.uuid4().hex[:8]}"
    with service.client() as c:
        assert c.get("/api/images", headers={"X-Request-ID": ok}).status_code == 200
        assert c.get("/api/images/no-such-image", headers={"X-Request-ID": missing}).status_code == 404

    [line] = serve_log_records("Ingress", "atelier", ok)
    assert (line["name"], line["status"], line["method"], line["route_template"]) == \
        ("atelier.access", 200, "GET", "/api/images")
    assert line["latency_ms"] >= 0 and line["levelname"] == "INFO" and line["replica"]

    # The user's mistake: one line, its status, and no traceback.
    [line] = serve_log_records("Ingress", "atelier", missing)
    assert (line["status"], line["route_template"]) == (404, "/api/images/{img_id}")
    assert "exc_text" not in line and "Traceback" not in line["message"]


def test_no_key_reaches_any_serve_log(service):
    with service.client() as c:
        c.get("/api/images", headers={"X-Request-ID": "logs-key-probe"})
    assert serve_log_records("Ingress", "atelier", "logs-key-probe")
    import ray
    from pathlib import Path

    folder = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            text = path.read_bytes()
            for key in service.keys.values():
                assert key.encode() not in text, path
