"""What one user's requests tell another, over real HTTP (in-process): cached answers are the caller's
own, absolute URLs never come from the request's `Host` header, and stats and replica names are the
caller's and the operator's business only."""

from __future__ import annotations

import uuid

import pytest
from http_helpers import auth


def _counts(client) -> dict:
    return dict(client.app.state.service.ctx.cache.counts)


def _delta(before: dict, after: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


@pytest.mark.parametrize("kind", ["enhance", "embed_text"])
def test_one_users_cached_answer_is_never_anothers(surface, kind):
    """Alice's second ask is answered from the cache; Bob asking the same text is not (the cache's own
    counters say so, not a clock), so nothing in his answer depends on what Alice sent."""
    client, _ = surface
    text = f"a lighthouse in a storm {uuid.uuid4().hex[:8]}"

    def ask(user):
        before = _counts(client)
        if kind == "enhance":
            r = client.post("/api/text", headers=auth(surface, user), json={"text": text, "flag": "prompt_enhancement"})
        else:
            r = client.get("/api/search", headers=auth(surface, user), params={"q": text, "k": 1})
        assert r.status_code == 200, r.text
        after = _counts(client)
        return _delta(before, after, f"{kind}.hit"), _delta(before, after, f"{kind}.miss")

    assert ask("alice") == (0, 1)
    assert ask("alice") == (1, 0)  # the cache works for its owner
    assert ask("bob") == (0, 1)    # ... and only for its owner
    assert ask("bob") == (1, 0)
