"""Links through Serve's real HTTP proxy: a client's `Host` and `X-Forwarded-Proto` never write them
(issue 28 E). The proxy's uvicorn believes forwarded headers only from `ATELIER_TRUSTED_PROXIES`
(none in the test cluster); uvicorn alone believes anyone on 127.0.0.1, as this client is."""

from __future__ import annotations

from tests.support.sample_photos import jpeg


def test_links_are_not_written_by_a_clients_host_or_forwarded_headers(service):
    with service.client() as c:
        r = c.post("/api/images", files={"file": ("l.jpg", jpeg(2801), "image/jpeg")},
                   headers={"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"})
    assert r.status_code in (200, 201), r.text
    url = r.json()["image_url"]
    assert url.startswith(service.base_url.rstrip("/") + "/api/images/"), (url, service.base_url)
