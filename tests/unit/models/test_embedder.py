"""Embedder on each family's tiny stand-in (SigLIP 2, Chinese-CLIP, CLIP): shapes, norms, batching, the
languages each reads, and every bad input refused by type."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models import Embedder, EmbedderConfig, EmbedderInputError, ModelNotFound


# kit folder -> (family, multilingual, dimension, image side, text context) as the kit builds them
FAMILIES = {
    "embedder": ("siglip", True, 48, 32, 64),
    "embedder_chinese_clip": ("chinese_clip", True, 32, 32, 52),
    "embedder_clip": ("clip", False, 64, 32, 77),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tiny_kit) -> tuple[str, Embedder]:
    e = Embedder(EmbedderConfig(model=str(tiny_kit / request.param), max_batch=16))
    e.warmup()
    return request.param, e


@pytest.fixture(scope="module")
def embedder(tiny_kit) -> Embedder:
    """The CLIP stand-in, for what every family shares (input checks)."""
    e = Embedder(EmbedderConfig(model=str(tiny_kit / "embedder_clip"), max_batch=16))
    e.warmup()
    return e


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


def test_each_family_loads_from_its_kit_folder_and_reports_itself(family, tiny_kit):
    name, embedder = family
    kind, multilingual, dim, side, context = FAMILIES[name]
    model = embedder._model
    embedder.load()
    assert embedder._model is model
    assert (embedder.family, embedder.multilingual, embedder.dim, embedder.image_size()) == (kind, multilingual, dim, side)
    assert embedder._context == context
    assert embedder.random_weights is True
    assert embedder.model_id == str(tiny_kit / name)
    assert embedder.facts() == {"family": kind, "multilingual": multilingual, "dim": dim,
                                "limits": {"max_text_chars": embedder.config.max_text_chars,
                                           "max_batch": embedder.config.max_batch}}


def test_image_vectors_are_unit_norm_float32(family):
    _, embedder = family
    vecs = embedder.embed_images(_images(5))
    assert vecs.shape == (5, embedder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1]), "different images must not share a vector"


def test_batch_equals_single_calls(family):
    _, embedder = family
    imgs = _images(6)
    batch = embedder.embed_images(imgs)
    singles = np.concatenate([embedder.embed_images([img]) for img in imgs])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_text_vectors_unit_norm_and_batch_equals_singles(family):
    _, embedder = family
    texts = ["a dog on the beach", "海边的日落", "今天和朋友一起去爬山，风景太美了！", "x" * 900]
    vecs = embedder.embed_texts(texts)
    assert vecs.shape == (4, embedder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([embedder.embed_texts([t]) for t in texts])
    np.testing.assert_allclose(vecs, singles, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1]) and not np.allclose(vecs[1], vecs[2])


def test_chinese_is_read_as_chinese_by_the_bilingual_families(family):
    """A bilingual tokenizer keeps Chinese characters as pieces of their own; none is unknown."""
    name, embedder = family
    tok = embedder._processor.tokenizer
    ids = tok("海边的日落，一只可爱的小猫")["input_ids"]
    unknown = sum(1 for i in ids if i == tok.unk_token_id)
    if FAMILIES[name][1]:
        assert unknown == 0 and len(ids) >= 5
    else:
        assert name == "embedder_clip"  # CLIP's BPE reads the bytes, not the words: hence the Writer's translation


def test_siglip_reads_lower_case_text_padded_to_its_context(tiny_kit):
    e = Embedder(EmbedderConfig(model=str(tiny_kit / "embedder")))
    e.load()
    enc = e._tokenize(["A Dog", "a dog on the beach"])
    assert list(enc) == ["input_ids"] and all(len(ids) == 64 for ids in enc["input_ids"])
    tok = e._processor.tokenizer
    first = enc["input_ids"][0]
    assert first[0] != tok.bos_token_id and tok.eos_token_id in first and first[-1] == tok.pad_token_id
    np.testing.assert_allclose(e.embed_texts(["A Dog"]), e.embed_texts(["a dog"]), atol=1e-6)


def test_multilingual_can_be_overridden(tiny_kit):
    e = Embedder(EmbedderConfig(model=str(tiny_kit / "embedder_clip"), multilingual=True))
    assert e.multilingual is True and e.family == "clip"


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
    assert "embedder" in msg and "nowhere" in msg and "python -m models.kit build" in msg


def test_uncached_hub_id_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    e = Embedder(EmbedderConfig(model="openai/clip-vit-base-patch32"))
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE"):
        e.load()
    assert not e.loaded


def test_count_tokens_counts_what_the_model_reads(embedder):
    short, longer, huge = embedder.count_tokens(["a cat", "a cat asleep on a red mat", "word " * 500])  # CLIP
    assert short == 4  # start + "a" + "cat" + end
    assert short < longer < huge
    assert huge == embedder._processor.tokenizer.model_max_length == 77  # cut at CLIP's context, as embedding does
    with pytest.raises(EmbedderInputError):
        embedder.count_tokens([])
