"""Keys live (issue 13): `python -m deployments.keys` against the running service's key table, and the
very next request through Serve's proxy (its gate) and the ingress replica (its own gate) answers
accordingly; no restart, no reload call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def keys_cli(*args: str) -> subprocess.CompletedProcess:
    # The environment names the key table (ATELIER_KEYS_URI), as on a node of the cluster.
    return subprocess.run([sys.executable, "-m", "deployments.keys", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def status(service, key: str) -> int:
    import httpx

    r = httpx.get(service.base_url + "/api/images", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.headers["content-type"].startswith("application/json")
    return r.status_code


def test_add_rotate_and_revoke_take_effect_on_the_next_request(service):
    added = keys_cli("add", "carol")
    assert added.returncode == 0, added.stderr
    first = added.stdout.strip()
    assert status(service, first) == 200

    # Rotation: a second key (made by another operator's process), both valid until the old one is revoked.
    from deployments.http.auth import key_store

    second = key_store().add("carol")[1]
    assert second != first and status(service, second) == 200 and status(service, first) == 200
    listed = keys_cli("list", "carol")
    ids = [line.split()[0] for line in listed.stdout.splitlines()]
    assert len(ids) == 2 and first.startswith(f"atl_{ids[0]}_") and second.startswith(f"atl_{ids[1]}_")
    assert first not in listed.stdout and second not in listed.stdout

    revoked = keys_cli("revoke", "carol", "--key", ids[0])
    assert revoked.returncode == 0, revoked.stderr
    assert status(service, first) == 401 and status(service, second) == 200

    # Revoking what is not there is a clear error, not a traceback.
    missing = keys_cli("revoke", "carol", "--key", ids[0])
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
    key_store().revoke("carol")  # --all
    assert status(service, second) == 401
    assert key_store().list("carol") == []


def test_concurrent_adds_lose_none(service):
    import threading

    from deployments.http.auth import key_store

    made: list[str] = []

    def add(i: int) -> None:
        # A store of its own per writer, like separate processes: Lance's optimistic commits, retried.
        made.append(key_store().add(f"crowd-{i}")[1])

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 12
    assert {row["user_id"] for row in key_store().list() if row["user_id"].startswith("crowd-")} == \
        {f"crowd-{i}" for i in range(12)}
    assert all(status(service, key) == 200 for key in made)
