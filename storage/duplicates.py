"""Near-duplicates, two kinds, each with its reason (issue 32).

- **same picture**: a re-encoded, resized or re-saved copy. Told by a perceptual hash (pHash: the 8x8 lowest
  frequencies of the 32x32 grey image's DCT, each above or below their median: 64 bits, kept in a row's
  `meta.phash` as 16 hex digits) within `duplicate_hash_bits` bits of the new photo's.
- **near shot**: a burst, the same scene a moment later. Told by the embedding: cosine similarity at or above
  the embedding model's `near_shot_cosine` (each model's scale differs, so the threshold is per model).

A new photo is compared with its nearest neighbours in the user's own gallery, as a search finds them (the
replica's vector cache or the table's index): never a scan of the whole gallery. A same-picture copy is
always among them, its embedding being all but the photo's own.

Written with numpy over Pillow rather than the `imagehash` package: that one requires scipy and PyWavelets in
every replica for a 32-point DCT.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIDE = 32  # the grey image's side before the DCT
_K = np.arange(HASH_SIDE)
_DCT = np.cos(np.pi * (2 * _K[None, :] + 1) * _K[:, None] / (2 * HASH_SIDE))  # DCT-II basis, rows = frequencies
SAME_PICTURE, NEAR_SHOT = "same_picture", "near_shot"


def perceptual_hash(image: Image.Image) -> str:
    """The image's pHash, 16 hex digits."""
    grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) is left out of the median
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def threshold(by_model: dict[str, float], model: str) -> float:
    """The near-shot cosine of an embedding model: its own, else the `default` entry."""
    return by_model.get(model, by_model.get("default", 1.0))


def near_duplicates(phash: str, hits: list[dict], *, hash_bits: int, cosine: float) -> list[dict]:
    """Which of a search's hits (rows with `score`, the cosine similarity, and `meta.phash`) are near-duplicates
    of a photo with this hash: [{img_id, kind, distance}], same pictures first, each closest first. `distance`
    is in bits for a same picture (of 64), 1 - cosine for a near shot."""
    found = []
    for hit in hits:
        other = (hit.get("meta") or {}).get("phash")
        bits = hamming(phash, other) if isinstance(other, str) and len(other) == 16 and len(phash) == 16 else None
        if bits is not None and bits <= hash_bits:
            found.append({"img_id": hit["img_id"], "kind": SAME_PICTURE, "distance": bits})
        elif hit.get("score", 0.0) >= cosine:
            found.append({"img_id": hit["img_id"], "kind": NEAR_SHOT, "distance": round(1.0 - float(hit["score"]), 6)})
    return sorted(found, key=lambda f: (f["kind"] != SAME_PICTURE, f["distance"]))


def batch_near(rows: list[dict], hits: list[list[dict]], *, hash_bits: int, cosine: float) -> list[list[dict]]:
    """The near-duplicates of each row of a batch about to be stored (a bulk job's): among its gallery `hits`
    (the user's nearest stored rows, as a search answers them) and among the batch's earlier rows, so that a
    burst inside one zip is found too. `rows` carry img_id, content_hash, vector (unit, float32) and meta.phash."""
    vectors = np.stack([np.asarray(r["vector"], np.float32) for r in rows]) if rows else np.empty((0, 0))
    if len(rows):
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similar = vectors @ vectors.T if len(rows) else vectors
    out = []
    for i, row in enumerate(rows):
        earlier = [{"img_id": rows[j]["img_id"], "score": float(similar[i, j]), "meta": rows[j]["meta"]}
                   for j in range(i) if rows[j]["content_hash"] != row["content_hash"]]
        stored = [h for h in hits[i] if h.get("content_hash") != row["content_hash"]]
        out.append(near_duplicates(row["meta"].get("phash") or "", stored + earlier, hash_bits=hash_bits,
                                   cosine=cosine))
    return out


def mark_pairs(rows: list[dict], hits: list[list[dict]], *, hash_bits: int, cosine: float) -> int:
    """`batch_near` of a batch about to be stored, its pairs put on each row (`meta.near`, replacing any it
    had); how many rows have one."""
    found = batch_near(rows, hits, hash_bits=hash_bits, cosine=cosine)
    for row, near in zip(rows, found):
        row["meta"].pop("near", None)
        if near:
            row["meta"]["near"] = stored_pairs(near)
    return sum(1 for near in found if near)


def stored_pairs(found: list[dict]) -> list[list]:
    """What a row keeps of an upload's check (`meta.near`): [[img_id, kind, distance], ...], the pairs a
    listing of the user's duplicate groups is made of (no rescan of the gallery)."""
    return [[d["img_id"], d["kind"], d["distance"]] for d in found]


def keeper(rows: list[dict]) -> tuple[dict, str]:
    """The photo of a group to keep, and why: the largest resolution, then the oldest."""
    best = max(rows, key=lambda r: (r["width"] * r["height"], -r["created_at"].timestamp()))
    same_size = [r for r in rows if r["width"] * r["height"] == best["width"] * best["height"]]
    if len(same_size) > 1:
        return best, f"oldest of the largest ({best['width']}x{best['height']})"
    return best, f"largest resolution ({best['width']}x{best['height']})"


def groups(rows: dict[str, dict], pairs: list[tuple[str, str, str, float]]) -> list[dict]:
    """The connected groups of near-duplicate pairs among `rows` (img_id -> row; pairs naming a photo not
    there any more are left out): [{group, members, pairs, keep, why}], largest group first, then newest.
    `group` names the members (a hash of their ids): a group that changed since it was listed has another
    name, so a decision about it is never applied to photos its caller did not see."""
    import hashlib

    parent = {i: i for i in rows}

    def root(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    kept = [p for p in pairs if p[0] in rows and p[1] in rows and p[0] != p[1]]
    for a, b, _, _ in kept:
        parent[root(a)] = root(b)
    members: dict[str, list[str]] = {}
    for i in rows:
        members.setdefault(root(i), []).append(i)
    pairs_of: dict[str, list[dict]] = {}  # each group's pairs, by its root: one pass over the pairs, not one per group
    for a, b, kind, distance in kept:
        pairs_of.setdefault(root(a), []).append({"img_id": a, "other": b, "kind": kind, "distance": distance})
    out = []
    for top, ids in members.items():
        if len(ids) < 2:
            continue
        ids.sort()
        chosen, why = keeper([rows[i] for i in ids])
        out.append({
            "group": hashlib.sha256(",".join(ids).encode()).hexdigest()[:24],
            "members": sorted((rows[i] for i in ids), key=lambda r: r["created_at"]),
            "pairs": pairs_of[top],
            "keep": chosen["img_id"], "why": why,
        })
    # Ties by name: the same groups come in the same order however their rows were read (a listing's pages).
    return sorted(out, key=lambda g: (-len(g["members"]), -max(r["created_at"].timestamp() for r in g["members"]),
                                      g["group"]))
