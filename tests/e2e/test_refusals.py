"""A caller's mistake is not a server error (issue 28): refused input is at most one INFO/WARNING line with
the request id in each process it touched, never Serve's ERROR "Request failed." with a traceback; what
the ingress can check it refuses itself, so no model replica is asked at all."""

from __future__ import annotations

import uuid

from tests.conftest import serve_log_records

ROLES = ("Painter", "Writer", "Embedder", "Describer")


def _lines(rid: str, deployment: str, timeout_s: float = 30) -> list[dict]:
    return serve_log_records(deployment, "atelier", rid, timeout_s=timeout_s)


def _one_quiet_line(records: list[dict]) -> dict:
    [line] = records
    assert line["levelname"] in ("INFO", "WARNING") and "exc_text" not in line, line
    assert "Traceback" not in line["message"], line
    return line


def test_refused_input_is_one_quiet_line_per_process_and_checked_in_the_ingress(service):
    tag = uuid.uuid4().hex[:8]
    ingress_checked = {
        f"refused-painter-{tag}": ("/api/generate/image", {"text": "x", "size": "huge"}, "size"),
        f"refused-writer-{tag}": ("/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2048}, "max_tokens"),
        f"refused-embedder-{tag}": ("/v1/embeddings", {"input": ""}, "input"),
    }
    # Only the Writer can count a conversation's tokens: over its limit (2048), it is the replica's refusal.
    too_long = f"refused-tokens-{tag}"
    with service.client() as c:
        for rid, (path, body, field) in ingress_checked.items():
            r = c.post(path, json=body, headers={"X-Request-ID": rid})
            assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
        r = c.post("/v1/chat/completions", headers={"X-Request-ID": too_long},
                   json={"messages": [{"role": "user", "content": "word " * 800}] * 4, "max_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["field"] == "messages", r.text

    refusal = _one_quiet_line(_lines(too_long, "Writer"))
    assert refusal["levelname"] == "WARNING" and "refused" in refusal["message"], refusal
    assert _one_quiet_line(_lines(too_long, "Ingress"))["status"] == 400
    for rid in ingress_checked:
        assert _one_quiet_line(_lines(rid, "Ingress"))["status"] == 400
        for role in ROLES:  # checked in the ingress: no replica refused it (a role's info, asked once per
            # ingress process for its limits, may be the one call, answered OK)
            for line in _lines(rid, role, timeout_s=0):
                assert line["levelname"] == "INFO" and line["message"].startswith("CALL call OK"), (rid, role, line)
