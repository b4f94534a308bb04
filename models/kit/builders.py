"""Builds random-weight stand-ins of the five roles' production architectures, in Hugging Face format.

`tiny` shapes keep every architectural feature (real tokenizers, chat templates, the FLUX wiring,
InternVL's pixel shuffle) at a size that builds in seconds on 2 cores; `full` shapes match the
production checkpoints named in DESIGN.md, so benchmarks measure the real cost of each model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from ..configs import MARKER
from . import tokenizers as tk
from .guard import build_guard, build_guard_image

Size = Literal["tiny", "full"]
ROLES = ("embedder", "writer", "describer", "painter", "guard")
# The Embedder's families, each a stand-in folder of its own. `embedder` is the production default's
# (SigLIP 2, multilingual: README "The model roles"); the other two are the alternatives a config may pick.
EMBEDDER_FAMILIES = {"embedder": "siglip2", "embedder_chinese_clip": "chinese_clip", "embedder_clip": "clip"}
# The Guard's second checkpoint, its image classifier (models/kit/guard.py builds both of its stand-ins).
STAND_INS = ROLES + tuple(name for name in EMBEDDER_FAMILIES if name not in ROLES) + ("guard_image",)

# ChatML, the template family of Qwen2.5 and InternVL3: the production chat format.
WRITER_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Like InternVL3-hf's: an image part becomes one <IMG_CONTEXT>, which the processor expands.
DESCRIBER_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<IMG_CONTEXT>\\n' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>"]
VLM_SPECIALS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


@dataclass(frozen=True)
class Built:
    role: str
    path: Path
    parameters: int


# Raised when what a builder writes changes, so a folder built before is known to be stale
# (2: the rows of ids the offline tokenizer lacks are zero; see _silence_unused_ids).
KIT_VERSION = 2


def build(role: str, size: Size, out: Path, *, seed: int = 0, dtype: torch.dtype | None = None) -> Built:
    """Write one role's stand-in under `out/role`; the same seed writes the same weights."""
    if role not in STAND_INS:
        raise ValueError(f"unknown role {role!r}; choose from {', '.join(STAND_INS)}")
    if dtype is None:
        dtype = torch.float32 if size == "tiny" else torch.bfloat16
    path = Path(out) / role
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    builder: Callable[[Size, Path, torch.dtype], int] = _BUILDERS[role]
    params = builder(size, path, dtype)
    (path / MARKER).write_text(
        json.dumps(
            {"random_weights": True, "role": role.split("_", 1)[0], "stand_in": role,
             **({"family": EMBEDDER_FAMILIES[role]} if role in EMBEDDER_FAMILIES else {}),
             "size": size, "seed": seed, "parameters": params, "kit_version": KIT_VERSION,
             "note": "Random-weight stand-in built offline by `python -m models.kit`; its outputs are noise."},
            indent=2,
        )
    )
    return Built(role, path, params)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _silence_unused_ids(model: torch.nn.Module, n_tokens: int) -> None:
    """Zero the embedding and output rows of the ids the tokenizer does not have. A full-size shape
    keeps its real vocabulary width (151,936 ids: the output layer is a fair part of a token's cost), but
    the kit's offline tokenizer has a few thousand tokens; with random rows there, greedy decoding picks
    an id that decodes to nothing and every answer is empty. A zero row scores 0, below the best real
    token's random score, as the padded rows of a trained checkpoint score below its words."""
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is not None and layer.weight.shape[0] > n_tokens:
                layer.weight[n_tokens:].zero_()


def _mark(config) -> None:
    # Also recorded in config.json, so a loaded model tells on itself without its folder.
    config.atelier_random_weights = True


# --- Embedder: CLIP, Chinese-CLIP, SigLIP 2 ---------------------------------------------------------------------------

def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = tk.clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _build_clip(size: Size, path: Path, dtype: torch.dtype) -> int:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    if size == "full":
        # openai/clip-vit-base-patch32: CLIPConfig's defaults are exactly ViT-B/32.
        config = CLIPConfig(projection_dim=512)
        image_size = 224
    else:
        image_size = 32
        config = CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=8),
            projection_dim=64,
        )
    _mark(config)
    model = CLIPModel(config).to(dtype)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=_clip_tokenizer(),
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return _count(model)


def chinese_clip_config(size: Size):
    """OFA-Sys/chinese-clip-vit-base-patch16's shape at `full`: RoBERTa-wwm-ext-base-chinese text tower
    (21,128 WordPiece vocabulary) + ViT-B/16 at 224 px, 512-d projection."""
    from transformers import ChineseCLIPConfig

    if size == "full":
        tower = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        text = dict(vocab_size=21128, max_position_embeddings=512, **tower)
        vision, projection = dict(image_size=224, patch_size=16, **tower), 512
    else:
        tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        text = dict(vocab_size=8000, max_position_embeddings=64, **tower)
        vision, projection = dict(image_size=32, patch_size=8, **tower), 32
    config = ChineseCLIPConfig(text_config=dict(type_vocab_size=2, pad_token_id=0, **text), vision_config=vision,
                               projection_dim=projection)
    _mark(config)
    return config


def _build_chinese_clip(size: Size, path: Path, dtype: torch.dtype) -> int:
    from transformers import BertTokenizer, ChineseCLIPImageProcessor, ChineseCLIPModel, ChineseCLIPProcessor

    config = chinese_clip_config(size)
    side = config.vision_config.image_size
    tok = BertTokenizer(vocab=tk.wordpiece_zh_en(config.text_config.vocab_size), do_lower_case=True,
                        tokenize_chinese_chars=True, model_max_length=52)  # Chinese-CLIP's text context
    model = ChineseCLIPModel(config).to(dtype)
    processor = ChineseCLIPProcessor(
        image_processor=ChineseCLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False),
        tokenizer=tok,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return _count(model)


SIGLIP_CONTEXT = 64  # SigLIP's text tower reads exactly 64 tokens, padded on the right


def siglip2_config(size: Size):
    """google/siglip2-base-patch16-224's shape at `full` (transformers loads it as `siglip`): Gemma's 256k
    vocabulary, 12-layer text and ViT-B/16 vision towers, 768-d vectors. Token ids are the kit's
    SentencePiece model's: <pad> 0, <eos> 1, <bos> 2."""
    from transformers import SiglipConfig

    if size == "full":
        tower = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vocab_size, vision = 256000, dict(image_size=224, patch_size=16)
    else:
        tower = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2)
        vocab_size, vision = 8000, dict(image_size=32, patch_size=8)
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab_size, max_position_embeddings=SIGLIP_CONTEXT,
                         projection_size=tower["hidden_size"], pad_token_id=0, eos_token_id=1, bos_token_id=2, **tower),
        vision_config=dict(**vision, **tower),
    )
    _mark(config)
    return config


def _build_siglip2(size: Size, path: Path, dtype: torch.dtype) -> int:
    from transformers import AutoTokenizer, SiglipImageProcessor, SiglipModel, SiglipProcessor

    config = siglip2_config(size)
    side = config.vision_config.image_size
    # Gemma's kind of tokenizer from a trained SentencePiece model (`tokenizer.model`, kept in the folder as
    # the real checkpoint has it; 32,000 pieces at full size, against the real 256k: the embedding table is
    # the real size all the same): no <bos>, an <eos> after the text, right padding to 64 with <pad>.
    (path / "tokenizer.model").write_bytes(tk.train_sentencepiece(32000 if size == "full" else 8000))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    tok = AutoTokenizer.from_pretrained(path, add_bos_token=False, add_eos_token=True, padding_side="right",
                                        model_max_length=SIGLIP_CONTEXT)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    model = SiglipModel(config).to(dtype)
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": side, "width": side}),
                                tokenizer=tok)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    # The loaded tokenizer remembers where its SentencePiece file was read from (this machine's path).
    saved = json.loads((path / "tokenizer_config.json").read_text())
    for key in ("vocab_file", "is_local", "local_files_only"):
        saved.pop(key, None)
    (path / "tokenizer_config.json").write_text(json.dumps(saved, indent=2, ensure_ascii=False))
    return _count(model)


# --- Writer: a Qwen2.5-style instruction LLM -------------------------------------------------------

def _chat_tokenizer(extra: dict[str, str] | None = None):
    from transformers import Qwen2Tokenizer

    vocab, merges = tk.train_byte_level_bpe(Qwen2Tokenizer(), vocab_size=6000)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    specials = list(CHATML_SPECIALS) + (list(extra.values()) if extra else [])
    tok.add_special_tokens({"extra_special_tokens": specials})
    if extra:
        # Named tokens (start_image_token, ...) that InternVL's processor reads as attributes.
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768,
                             extra_special_tokens=extra)
        tok.add_special_tokens({"extra_special_tokens": specials}, replace_extra_special_tokens=False)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    return tok


def _qwen2_text_config(size: Size, vocab_size: int, *, vlm: bool) -> dict:
    if size == "full" and not vlm:
        # Qwen/Qwen2.5-1.5B-Instruct
        return dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    if size == "full":
        # The language half of OpenGVLab/InternVL3-1B-hf (Qwen2.5-0.5B, its lm_head untied by the fine-tune)
        return dict(vocab_size=151674, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rms_norm_eps=1e-6, tie_word_embeddings=True)


def _build_writer(size: Size, path: Path, dtype: torch.dtype) -> int:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = _chat_tokenizer()
    text = _qwen2_text_config(size, len(tok), vlm=False)
    text["vocab_size"] = max(text["vocab_size"], len(tok))
    config = Qwen2Config(**text, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    _mark(config)
    model = Qwen2ForCausalLM(config).to(dtype)
    _silence_unused_ids(model, len(tok))
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.pad_token_id, do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
    )
    tok.chat_template = WRITER_CHAT_TEMPLATE
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return _count(model)


# --- Describer: InternVL (transformers-native) -----------------------------------------------------

def _build_describer(size: Size, path: Path, dtype: torch.dtype) -> int:
    from transformers import (GenerationConfig, GotOcr2ImageProcessor, InternVLConfig,
                              InternVLForConditionalGeneration, InternVLProcessor)
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    tok = _chat_tokenizer(VLM_SPECIALS)
    text = _qwen2_text_config(size, len(tok), vlm=True)
    text["vocab_size"] = max(text["vocab_size"], len(tok))
    if size == "full":
        # InternViT-300M-448px-V2.5, the vision half of InternVL3-1B
        image_size, patch = 448, 14
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=[image_size, image_size], patch_size=[patch, patch], use_qk_norm=False,
                      layer_scale_init_value=0.1, use_mean_pooling=True)
    else:
        image_size, patch = 56, 14
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=[image_size, image_size], patch_size=[patch, patch])
    downsample = 0.5
    config = InternVLConfig(
        vision_config=vision, text_config=dict(model_type="qwen2", **text),
        image_token_id=tok.context_image_token_id, downsample_ratio=downsample,
        tie_word_embeddings=text["tie_word_embeddings"],
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    _mark(config)
    model = InternVLForConditionalGeneration(config).to(dtype)
    _silence_unused_ids(model, len(tok))
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.pad_token_id,
    )
    seq_len = int((image_size // patch) ** 2 * downsample**2)
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": image_size, "width": image_size},
                                              crop_to_patches=False, do_convert_rgb=True),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size={"height": image_size, "width": image_size}),
        image_seq_length=seq_len,
        chat_template=DESCRIBER_CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return _count(model)


# --- Painter: FLUX -----------------------------------------------------------------------------------

def _t5_tokenizer():
    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = tk.train_unigram(T5Tokenizer(extra_ids=0), vocab_size=4000, specials=specials)
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _build_painter(size: Size, path: Path, dtype: torch.dtype) -> int:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = _clip_tokenizer()
    t5_tok = _t5_tokenizer()
    if size == "full":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "the full-size FLUX.1-schnell stand-in (12B transformer + 4.7B T5-XXL) only fits a GPU host; "
                "build it there, or build --size tiny here"
            )
        device = torch.device("cuda")
        # black-forest-labs/FLUX.1-schnell
        clip_cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
        t5_cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                          feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        transformer_kw = {}  # FluxTransformer2DModel's defaults are FLUX.1's shapes
        vae_kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                      norm_num_groups=32, sample_size=1024)
    else:
        device = torch.device("cpu")
        clip_cfg = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  projection_dim=32, max_position_embeddings=77)
        t5_cfg = T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        # joint_attention_dim = T5 d_model; pooled_projection_dim = CLIP text hidden; rope axes sum to head dim
        transformer_kw = dict(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                              num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                              axes_dims_rope=(4, 6, 6))
        # Four levels keep FLUX's 8x VAE scale, so sizes obey the production multiple-of-16 rule.
        vae_kw = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=16,
                      norm_num_groups=8, sample_size=64)
    clip_cfg.vocab_size = len(clip_tok)
    clip_cfg.bos_token_id, clip_cfg.eos_token_id = clip_tok.bos_token_id, clip_tok.eos_token_id
    clip_cfg.pad_token_id = clip_tok.pad_token_id
    t5_cfg.vocab_size = max(t5_cfg.vocab_size, len(t5_tok))
    for cfg in (clip_cfg, t5_cfg):
        _mark(cfg)
    with device:
        text_encoder = CLIPTextModel(clip_cfg).to(dtype)
        text_encoder_2 = T5EncoderModel(t5_cfg).to(dtype)
        transformer = FluxTransformer2DModel(**transformer_kw).to(dtype)
        vae = AutoencoderKL(in_channels=3, out_channels=3,
                            down_block_types=("DownEncoderBlock2D",) * len(vae_kw["block_out_channels"]),
                            up_block_types=("UpDecoderBlock2D",) * len(vae_kw["block_out_channels"]),
                            use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.1159, scaling_factor=0.3611, **vae_kw).to(dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False,
                                                base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
                        text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(path, safe_serialization=True)
    return sum(_count(m) for m in (text_encoder, text_encoder_2, transformer, vae))


_BUILDERS: dict[str, Callable[[Size, Path, torch.dtype], int]] = {
    "embedder": _build_siglip2,
    "embedder_chinese_clip": _build_chinese_clip,
    "embedder_clip": _build_clip,
    "writer": _build_writer,
    "describer": _build_describer,
    "painter": _build_painter,
    "guard": build_guard,
    "guard_image": build_guard_image,
}
