"""The offline kit writes real Hugging Face checkpoints of the production architectures, deterministically."""

from __future__ import annotations

import hashlib
import json

import pytest

from models.kit import EMBEDDER_FAMILIES, MARKER, ROLES, STAND_INS, build



def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.safetensors"))}


def test_every_role_is_built_marked_and_small(tiny_kit):
    total = sum(f.stat().st_size for f in tiny_kit.rglob("*") if f.is_file())
    assert total < 60 * 1024 * 1024
    for role in STAND_INS:
        marker = json.loads((tiny_kit / role / MARKER).read_text())
        assert marker["random_weights"] is True and marker["size"] == "tiny" and marker["stand_in"] == role
        assert marker["role"] == (role if role in ROLES else role.split("_")[0])  # guard_image is the Guard's
        assert marker.get("family") == EMBEDDER_FAMILIES.get(role)
        assert _digest(tiny_kit / role), f"{role} has no safetensors weights"
        assert not list((tiny_kit / role).rglob("*.bin")), "pickled weights must never be written"


def test_same_seed_same_weights_other_seed_other_weights(tiny_kit, tmp_path):
    for role in ("embedder", "writer"):
        build(role, "tiny", tmp_path / "again", seed=0)
        build(role, "tiny", tmp_path / "other", seed=1)
        assert _digest(tmp_path / "again" / role) == _digest(tiny_kit / role)
        assert _digest(tmp_path / "other" / role) != _digest(tiny_kit / role)


def test_clip_tokenizer_is_the_real_one(tiny_kit):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_kit / "embedder_clip")
    # Token ids of openai/clip-vit-base-patch32 for this sentence.
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_chat_templates_render_chatml(tiny_kit):
    from transformers import AutoProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_kit / "writer")
    text = tok.apply_chat_template([{"role": "user", "content": "海边的日落"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\n海边的日落<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(tok("海边的日落 at sunset")["input_ids"]) == "海边的日落 at sunset"

    proc = AutoProcessor.from_pretrained(tiny_kit / "describer")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert "<IMG_CONTEXT>\nWhat is this?" in proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def test_unknown_role_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown role"):
        build("singer", "tiny", tmp_path)


def test_full_embedder_has_clip_vit_b32_parameter_count(tmp_path):
    built = build("embedder_clip", "full", tmp_path, seed=0)
    # openai/clip-vit-base-patch32 has 151,277,313 parameters.
    assert built.parameters == 151_277_313


@pytest.mark.parametrize("config, parameters", [
    ("siglip2_config", 375_187_970),       # google/siglip2-base-patch16-224
    ("chinese_clip_config", 188_262_913),  # OFA-Sys/chinese-clip-vit-base-patch16
])
def test_full_bilingual_embedders_have_the_real_parameter_counts(config, parameters):
    """The full-size shapes, counted without materialising them (a meta-device model)."""
    import torch
    from transformers import AutoModel

    from models.kit import builders

    with torch.device("meta"):
        model = AutoModel.from_config(getattr(builders, config)("full"))
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_bilingual_tokenizers_are_of_the_right_kind(tiny_kit):
    from transformers import AutoTokenizer

    siglip = AutoTokenizer.from_pretrained(tiny_kit / "embedder")
    assert type(siglip).__name__ == "GemmaTokenizer" and (tiny_kit / "embedder" / "tokenizer.model").is_file()
    assert "vocab_file" not in json.loads((tiny_kit / "embedder" / "tokenizer_config.json").read_text())
    assert siglip.decode(siglip("海边的日落 at sunset")["input_ids"], skip_special_tokens=True) == "海边的日落 at sunset"
    wordpiece = AutoTokenizer.from_pretrained(tiny_kit / "embedder_chinese_clip")
    assert type(wordpiece).__name__ == "BertTokenizer"
    # BERT's Chinese tokenisation: one piece per character, English in lower-cased word pieces.
    assert wordpiece.tokenize("海边的日落 A Dog") == ["海", "边", "的", "日", "落", "a", "dog"]
