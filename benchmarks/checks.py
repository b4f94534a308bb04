"""Answers before speeds (issue 27): a benchmark checks what it timed or counted before it reports how fast.

Every benchmark calls `check(cond, what)` (or one of the helpers below, built on it) on the answers it
measures: an empty result where rows exist, an unexpected HTTP status, a count that does not add up
(stored != sent, duplicates, missing). A wrong answer raises `BenchmarkWrong`; `run(main)` turns it into
exit status 3 with the reason on stderr, and `ready_to_publish` (called by results_md.write_section, the
one place that writes RESULTS.md) refuses to write in a process that checked nothing or saw a check fail,
even one somebody caught. So a wrong run exits non-zero and leaves RESULTS.md as it was.

The standard library only: benchmarks/gpu_proof.py loads this file from beside itself on a GPU host that
has none of the project's packages (numpy is imported inside `check_vectors`, which it never calls).
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Callable, Iterable, Mapping

WRONG_EXIT = 3  # a benchmark's answers were wrong: nothing published (argparse's usage errors are 2)


class BenchmarkWrong(RuntimeError):
    """A benchmark measured wrong answers: its numbers mean nothing and must not be published."""


_made = 0
_failed: list[str] = []


def check(cond: Any, what: str) -> None:
    """Raise BenchmarkWrong(what) unless `cond` holds (never `assert`: `python -O` would drop it)."""
    global _made
    _made += 1
    if not cond:
        _failed.append(what)
        raise BenchmarkWrong(what)


def _counts(counts: Mapping) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "nothing"


def check_statuses(what: str, statuses: Mapping, expected: Mapping) -> None:
    """Answers counted by status (HTTP code, or any label) are exactly `expected`, e.g. {200: 64}."""
    got = {k: v for k, v in statuses.items() if v}
    check(got == {k: v for k, v in expected.items() if v}, f"{what}: answered {_counts(got)}, expected {_counts(expected)}")


def check_stored(what: str, sent: Iterable, stored: Iterable) -> None:
    """What a run stored is what it sent: every key once, none missing, none it did not send."""
    sent, stored = list(sent), list(stored)
    check(len(set(sent)) == len(sent), f"{what}: the benchmark sent {len(sent) - len(set(sent))} duplicate keys itself")
    dup = sum(n - 1 for n in Counter(stored).values())
    missing, extra = set(sent) - set(stored), set(stored) - set(sent)
    check(not dup and not missing and not extra,
          f"{what}: sent {len(sent)}, stored {len(stored)} ({len(missing)} missing, {dup} duplicated, "
          f"{len(extra)} never sent)")


def check_vectors(what: str, vectors: Any, n: int, dim: int) -> None:
    """`n` unit-norm float vectors of `dim` values, all finite (what an Embedder answers)."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float32)
    check(v.shape == (n, dim), f"{what}: vectors of shape {v.shape}, expected {(n, dim)}")
    check(bool(np.isfinite(v).all()), f"{what}: non-finite values in the vectors")
    norms = np.linalg.norm(v, axis=1)
    check(bool(np.allclose(norms, 1.0, atol=1e-3)), f"{what}: vector norms {norms.min():.4f}..{norms.max():.4f}, not 1")


def check_hits(what: str, hits: list[dict], k: int, key: str = "img_id") -> None:
    """A search answer with exactly `k` distinct hits (the user has at least `k` rows)."""
    ids = [h[key] for h in hits]
    check(len(ids) == k and len(set(ids)) == k, f"{what}: {len(ids)} hits ({len(set(ids))} distinct), expected {k}")


def stored_hashes(gallery: Any, user: str) -> list[str]:
    """`user`'s content hashes in a storage.gallery.Gallery's table, one per row (duplicates kept)."""
    tbl = gallery.table.search().select(["user_id", "content_hash"]).limit(None).to_arrow()
    return [h for u, h in zip(tbl.column("user_id").to_pylist(), tbl.column("content_hash").to_pylist()) if u == user]


def ready_to_publish(where: str) -> None:
    """Called right before a result is written: this process checked its answers and none was wrong."""
    if _failed:
        raise BenchmarkWrong(f"not writing {where}: {len(_failed)} check(s) failed, the first: {_failed[0]}")
    if not _made:
        raise BenchmarkWrong(f"not writing {where}: this run checked none of its answers")


def run(main: Callable[[], Any]) -> int:
    """A benchmark's entry point: its exit status, WRONG_EXIT (and the reason on stderr) for wrong answers."""
    try:
        code = main()
    except BenchmarkWrong as exc:
        print(f"\nWRONG ANSWERS, nothing published: {exc}", file=sys.stderr, flush=True)
        return WRONG_EXIT
    return code if isinstance(code, int) else 0
