"""Both kinds of vector index the gallery can build answer every k it accepts, with only the
user's rows and near-exact recall (the refine step asks an index for k * refine_factor rows)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from storage.gallery import VECTOR_INDEX, Gallery
from storage.settings import StorageSettings


DIM = 32


def rows(user: str, vectors: np.ndarray) -> list[dict]:
    return [{"user_id": user, "content_hash": hashlib.sha256(f"{user}/{i}".encode()).hexdigest(),
             "image_uri": f"{user}/{i}", "width": 8, "height": 8, "vector": v} for i, v in enumerate(vectors)]


@pytest.mark.parametrize("index_type", ["IVF_PQ", "IVF_HNSW_SQ"])
def test_each_index_type_answers_every_k(tmp_path, index_type):
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((20, DIM))
    alice = (centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, DIM))).astype(np.float32)
    bob = rng.standard_normal((1000, DIM)).astype(np.float32)
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), ann_index_type=index_type, ann_num_partitions=4,
                               optimize_every_rows=1_000_000, optimize_every_commits=1_000_000)
    gallery = Gallery.open(settings, dim=DIM, embed_model="test/embedder")
    stored = gallery.upsert(rows("alice", alice) + rows("bob", bob))["rows"]
    ids = np.array([r["img_id"] for r in stored[:3000]])
    gallery.upkeep.build_ann_index()
    assert VECTOR_INDEX in {ix.name for ix in gallery.table.list_indices()}

    unit = alice / np.linalg.norm(alice, axis=1, keepdims=True)
    recalls = []
    for k in (1, 10, settings.search_max_k):
        for q in alice[:10] + 0.1 * rng.standard_normal((10, DIM)).astype(np.float32):
            hits = gallery.search("alice", q, k=k, exact=False)
            assert len(hits) == k and {h["user_id"] for h in hits} == {"alice"}
            truth = ids[np.argsort(-(unit @ (q / np.linalg.norm(q))))[:k]]
            recalls.append(len(set(truth) & {h["img_id"] for h in hits}) / k)
    assert np.mean(recalls) >= 0.95, f"{index_type} recall {np.mean(recalls):.3f}"
