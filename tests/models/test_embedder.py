"""Embedder on the tiny CLIP stand-in: shapes, norms, batching, and every bad input refused by type."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deployments.models import Embedder, EmbedderConfig, EmbedderInputError, ModelNotFound

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def embedder(tiny_kit) -> Embedder:
    e = Embedder(EmbedderConfig(model=str(tiny_kit / "embedder"), max_batch=16))
    e.warmup()
    return e


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


def test_loads_once_and_reports_itself(embedder, tiny_kit):
    model = embedder._model
    embedder.load()
    assert embedder._model is model
    assert embedder.dim == 64 and embedder.image_size == 32
    assert embedder.random_weights is True
    assert embedder.model_id == str(tiny_kit / "embedder")


def test_image_vectors_are_unit_norm_float32(embedder):
    vecs = embedder.embed_images(_images(5))
    assert vecs.shape == (5, embedder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1]), "different images must not share a vector"


def test_batch_equals_single_calls(embedder):
    imgs = _images(6)
    batch = embedder.embed_images(imgs)
    singles = np.concatenate([embedder.embed_images([img]) for img in imgs])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_text_vectors(embedder):
    vecs = embedder.embed_texts(["a dog on the beach", "海边的日落", "x" * 900])
    assert vecs.shape == (3, embedder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_texts(["海边的日落"])[0], vecs[1], atol=1e-5)


def test_non_rgb_images_are_converted(embedder):
    gray = Image.new("L", (50, 50), 128)
    rgba = Image.new("RGBA", (50, 50), (128, 128, 128, 255))
    out = embedder.embed_images([gray, rgba, gray.convert("RGB")])
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e: e.embed_images([]), "non-empty list"),
        (lambda e: e.embed_images([b"\x89PNG not decoded"]), "not a PIL image"),
        (lambda e: e.embed_images(_images(17)), "limit per call is 16"),
        (lambda e: e.embed_texts([]), "non-empty list"),
        (lambda e: e.embed_texts(["ok", "   "]), r"texts\[1\] is empty"),
        (lambda e: e.embed_texts(["y" * 1001]), "limit is 1000"),
    ],
)
def test_bad_inputs_raise_typed_errors(embedder, call, match):
    with pytest.raises(EmbedderInputError, match=match) as info:
        call(embedder)
    assert info.value.status == 400


def test_missing_folder_fails_fast_naming_role_and_fix(tmp_path):
    e = Embedder(EmbedderConfig(model=str(tmp_path / "nowhere")))
    with pytest.raises(ModelNotFound) as info:
        e.load()
    msg = str(info.value)
    assert "embedder" in msg and "nowhere" in msg and "python -m deployments.kit build" in msg


def test_uncached_hub_id_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    e = Embedder(EmbedderConfig(model="openai/clip-vit-base-patch32"))
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE"):
        e.load()
    assert not e.loaded


def test_count_tokens_counts_what_the_model_reads(embedder):
    short, longer, huge = embedder.count_tokens(["a cat", "a cat asleep on a red mat", "word " * 500])
    assert short == 4  # start + "a" + "cat" + end
    assert short < longer < huge
    assert huge == embedder._processor.tokenizer.model_max_length  # cut at CLIP's context, as embedding does
    with pytest.raises(EmbedderInputError):
        embedder.count_tokens([])
