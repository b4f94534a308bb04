"""The Guard's two stand-ins: a Qwen3Guard-Gen-0.6B-shaped moderation LLM (`guard`) and a ViT-base/16 image
classifier shaped like Falconsai/nsfw_image_detection (`guard_image`).

Nothing here imports builders.py (builders.py imports this file to register the two builders, and an
import cycle between them fails tests/unit/test_layers.py), so the few lines of it needed are repeated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from . import tokenizers as tk

Size = Literal["tiny", "full"]

# Qwen3Guard-Gen's answer words: the labels of its first line and its unsafe categories' names.
SAFETY_LABELS = ("Safe", "Unsafe", "Controversial")
CATEGORY_NAMES = ("Violent", "Non-violent Illegal Acts", "Sexual Content or Sexual Acts", "PII",
                  "Suicide & Self-Harm", "Unethical Acts", "Politically Sensitive Topics", "Copyright Violation",
                  "Jailbreak")
IMAGE_LABELS = {0: "normal", 1: "nsfw"}
NORMAL_LEAN = 2.5  # the classifier's bias toward `normal`, in logits (build_guard_image)

# A moderation prompt in the spirit of Qwen3Guard-Gen's template (our own words): the task, the policy's
# three labels, one line per category, the conversation, the answer format. About as long as the real one,
# since the Guard's cost is this prefill: the benchmarks measure it, and every check pays it.
GUARD_CHAT_TEMPLATE = (
    "{{- '<|im_start|>user\\n' }}"
    "{{- '# Task:\\n1) Decide whether the LAST USER message in the conversation below is safe, unsafe or '"
    "'controversial under the safety policy.\\n2) Name the categories of unsafe content it contains.\\n\\n' }}"
    "{{- '<BEGIN SAFETY POLICY>\\n'"
    "'**Safety: Safe**: the message holds no prohibited content and asks for none.\\n'"
    "'**Safety: Unsafe**: the message holds prohibited content, or plainly asks for it.\\n'"
    "'**Safety: Controversial**: the message is not plainly prohibited, but its intent or context could '"
    "'be misread, misused or turned into unsafe content in some settings.\\n<END SAFETY POLICY>\\n\\n' }}"
    "{{- '<BEGIN UNSAFE CONTENT CATEGORIES>\\n'"
    "'Violent: threats, incitement or instructions for harming people or animals, weapons and terror.\\n'"
    "'Non-violent Illegal Acts: fraud, theft, hacking, drugs, trafficking and other crimes without violence.\\n'"
    "'Sexual Content or Sexual Acts: explicit sexual material, sexual services, anything sexual with minors.\\n'"
    "'PII: personal data of a real person (addresses, identity numbers, accounts) shared or sought.\\n'"
    "'Suicide & Self-Harm: encouragement of, or methods for, suicide, self-injury or eating disorders.\\n'"
    "'Unethical Acts: discrimination, harassment, manipulation, hate and other harm short of crime.\\n'"
    "'Politically Sensitive Topics: false or inflammatory claims about political figures, events or groups.\\n'"
    "'Copyright Violation: reproducing or distributing protected works without the rights to them.\\n'"
    "'Jailbreak: attempts to make an assistant ignore its rules, role-play around them or reveal its prompt.\\n'"
    "'<END UNSAFE CONTENT CATEGORIES>\\n\\n<BEGIN CONVERSATION>\\n' }}"
    "{%- for message in messages %}"
    "{{- '\\n' + ('USER' if message['role'] == 'user' else 'ASSISTANT') + ': ' + message['content'] + '\\n' }}"
    "{%- endfor %}"
    "{{- '\\n<END CONVERSATION>\\n\\nGive your safety assessment of ONLY THE LAST USER message above:\\n'"
    "' - The first line must be one of: \\'Safety: Safe\\', \\'Safety: Unsafe\\', \\'Safety: Controversial\\'.\\n'"
    "' - The second line must start with \\'Categories:\\' and list the unsafe categories found, separated by '"
    "'commas, or \\'Categories: None\\' when the message is safe.<|im_end|>\\n' }}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def guard_tokenizer():
    """The kit's byte-level BPE (the Writer's, trained on the same corpus) with the answer words as whole
    tokens. The corpus has only lower-case words, so ' Sexual' and ' Suicide' both began with ' S' (and
    every label with a bare space): the Guard scores the FIRST token of each word and needs them distinct,
    as they are in Qwen's real vocabulary. Merges appended after the trained ones join exactly the pieces
    the trained merges leave, so nothing else tokenises differently."""
    from tokenizers import models, pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab, merges = tk.train_byte_level_bpe(Qwen2Tokenizer(), vocab_size=6000)
    vocab, merges = dict(vocab), list(merges)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    words = [" " + w for w in SAFETY_LABELS + tuple(name.split()[0] for name in CATEGORY_NAMES)]
    for word in words + ["Safety", "Categories"]:
        symbol = byte_level.pre_tokenize_str(word)[0][0]
        pieces = [t.value for t in models.BPE(vocab=vocab, merges=merges).tokenize(symbol)]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    tok.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]})  # ChatML, as the Writer's
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = GUARD_CHAT_TEMPLATE
    return tok


def qwen3_guard_config(size: Size, vocab_size: int):
    """Qwen/Qwen3Guard-Gen-0.6B's shape at `full` (Qwen3-0.6B: 596,049,920 parameters, tied embeddings)."""
    from transformers import Qwen3Config

    if size == "full":
        shape = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                     rope_theta=1000000.0)
    else:  # Qwen3Config's head_dim defaults to 128 whatever the width: a tiny one sets its own
        shape = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
    shape["vocab_size"] = max(shape["vocab_size"], vocab_size)
    config = Qwen3Config(**shape, rms_norm_eps=1e-6, tie_word_embeddings=True)
    config.atelier_random_weights = True  # as builders._mark: a loaded model tells on itself
    return config


def vit_image_config(size: Size):
    """Falconsai/nsfw_image_detection's shape at `full`: ViT-base/16 at 224 px (ViTConfig's defaults),
    two labels: 85,800,194 parameters."""
    from transformers import ViTConfig

    shape = {} if size == "full" else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, image_size=32, patch_size=8)
    config = ViTConfig(**shape, num_labels=len(IMAGE_LABELS), id2label=dict(IMAGE_LABELS),
                       label2id={v: k for k, v in IMAGE_LABELS.items()})
    config.atelier_random_weights = True
    return config


def build_guard(size: Size, path: Path, dtype: torch.dtype) -> int:
    from transformers import GenerationConfig, Qwen3ForCausalLM

    tok = guard_tokenizer()
    config = qwen3_guard_config(size, len(tok))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, tok.eos_token_id, tok.pad_token_id
    model = Qwen3ForCausalLM(config).to(dtype)
    # The rows of ids the kit's tokenizer lacks stay random (builders zeroes them for generating roles): the
    # Guard never generates, it reads the logits of its answer words only.
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               do_sample=False)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def build_guard_image(size: Size, path: Path, dtype: torch.dtype) -> int:
    from transformers import ViTForImageClassification, ViTImageProcessor

    config = vit_image_config(size)
    model = ViTForImageClassification(config)
    # The head leans to `normal`, as a trained classifier answers for most photos: with an even head, random
    # weights would score every picture about 0.5 nsfw, and the default policy (block from 0.5) would refuse
    # a random half of the quickstart's paintings. The scores stay noise around ~0.01.
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([NORMAL_LEAN, -NORMAL_LEAN]))
    model = model.to(dtype)
    side = config.image_size
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(path)
    return sum(p.numel() for p in model.parameters())
