"""The web console's files (issue 33) as the ingress serves them: no key needed, this origin only (the CSP), no
framing and no referrer, and nothing under /console/ but the console's own files. (Its behaviour in a browser:
tests/browser/.)"""

from __future__ import annotations

from deployments.http.console import FILES


def test_the_page_and_its_files_are_served_without_a_key_with_a_strict_policy(surface):
    client, _ = surface
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["x-content-type-options"] == "nosniff"
    for name, media_type in FILES.items():
        r = client.get(f"/console/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media_type and r.content, name
        assert r.headers["content-security-policy"] == policy
    # Every script the page loads is one of the files, none inline; every module import names one of them too.
    assert "<script>" not in page.text and 'src="/console/app.js"' in page.text
    for name in (n for n in FILES if n.endswith(".js")):
        text = client.get(f"/console/{name}").text
        assert "innerHTML" not in text and "eval(" not in text, name
        for imported in __import__("re").findall(r"from '\./([\w.]+)'", text):
            assert imported in FILES, (name, imported)


def test_nothing_else_is_served_under_console(surface):
    client, _ = surface
    for path in ("/console/nope.js", "/console/..%2Fapi%2Fimages", "/console/__init__.py", "/console/"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
    assert client.post("/").status_code in (401, 405)
