"""Tokenizers for the offline stand-ins: CLIP's real BPE, and small trained byte-level BPE and Unigram ones."""

from __future__ import annotations

import gzip
import importlib.resources
from functools import lru_cache

from tokenizers import pre_tokenizers, trainers

# Words a social-media assistant sees, in both languages the product serves; the trained
# tokenizers only need a realistic mix of scripts, not a large corpus.
_SENTENCES = [
    "a golden retriever running on the beach at sunset, warm light, 35mm photo",
    "a cup of coffee on a wooden table next to an open book, morning light",
    "snowy mountains under a clear blue sky, wide angle landscape photography",
    "a city street at night with neon signs reflected in the rain",
    "portrait of a smiling woman in a red dress, soft bokeh background",
    "a bowl of ramen with egg and green onions, food photography, top view",
    "Describe this image in detail.",
    "Rewrite the idea as a rich English prompt for a text-to-image model.",
    "Write a short, friendly social media post in Chinese about this photo.",
    "You are a helpful assistant.",
    "海边的日落，金色的阳光洒在沙滩上。",
    "今天和朋友一起去爬山，风景太美了！",
    "一只可爱的小猫在窗台上晒太阳。",
    "周末的咖啡时光，配上一本好书。",
    "城市的夜景灯火辉煌，雨后的街道倒映着霓虹灯。",
    "请用中文写一段适合发朋友圈的文案。",
    "把这个想法改写成详细的英文绘画提示词。",
    "春天的樱花开满了公园，粉色的花瓣随风飘落。",
]


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The real CLIP vocabulary and merges, rebuilt from the merges file open_clip ships."""
    return _clip_bpe()


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    path = importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    # The file's first line is a header; CLIP uses the first 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = _bytes_to_unicode()
    vocab_list = list(byte_symbols) + [s + "</w>" for s in byte_symbols]
    vocab_list += ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _bytes_to_unicode() -> list[str]:
    # GPT-2's reversible byte -> printable-character table, in CLIP's order.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    return tuple(corpus())


def corpus() -> list[str]:
    """Training text: the sentences above, English words from CLIP's vocabulary, Chinese words from jieba's dictionary."""
    vocab, _ = clip_bpe()
    english = [t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isalpha() and len(t) > 6][:20000]
    chinese = []
    dict_path = importlib.resources.files("jieba") / "dict.txt"
    with dict_path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= 30000:
                break
            chinese.append(line.split(" ", 1)[0])
    lines = list(_SENTENCES) * 20
    lines += [" ".join(english[i : i + 12]) for i in range(0, len(english), 12)]
    lines += ["".join(chinese[i : i + 8]) for i in range(0, len(chinese), 8)]
    return lines


def train_byte_level_bpe(tokenizer, vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train the backend of an (empty) byte-level BPE tokenizer class and return its vocab and merges."""
    import json

    backend = tokenizer.backend_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def train_unigram(tokenizer, vocab_size: int, specials: list[str]) -> list[tuple[str, float]]:
    """Train a Unigram model (T5's kind) on the backend of an empty tokenizer; returns (piece, score) pairs."""
    import json

    backend = tokenizer.backend_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=specials[2], show_progress=False
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    return [(piece, float(score)) for piece, score in model["vocab"]]


# BERT's layout, which Chinese-CLIP's RoBERTa-wwm-ext vocabulary keeps: [PAD], 99 unused slots, then the
# other specials at 100-103.
BERT_SPECIALS = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_zh_en(size: int) -> dict[str, int]:
    """A WordPiece vocabulary of exactly `size` entries shaped like Chinese-CLIP's (21,128 in the real one):
    BERT's specials, ASCII, every CJK character of jieba's dictionary (BERT splits Chinese into single
    characters), lower-cased English words and suffix pieces from CLIP's vocabulary, then `##` + CJK
    characters, as the real vocabulary carries them."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token and token not in vocab and len(vocab) < size:
            vocab[token] = len(vocab)

    for token in BERT_SPECIALS:
        add(token)
    for c in [*range(33, 127), *range(0x3001, 0x3012), *range(0xFF01, 0xFF5F)]:  # ASCII, CJK and full-width punctuation
        add(chr(c).lower())
    weight: dict[str, int] = {}
    dict_path = importlib.resources.files("jieba") / "dict.txt"
    with dict_path.open(encoding="utf-8") as fh:
        for line in fh:
            word, freq = line.split(" ", 2)[:2]
            for ch in word:
                if "\u4e00" <= ch <= "\u9fff":
                    weight[ch] = weight.get(ch, 0) + int(freq)
    chars = sorted(weight, key=lambda ch: (-weight[ch], ch))[: size // 3]  # the most used characters first
    for ch in chars:
        add(ch)
    clip_vocab, _ = clip_bpe()
    words = [t[:-4] for t in clip_vocab if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha()]
    pieces = [t for t in clip_vocab if not t.endswith("</w>") and t.isascii() and t.isalpha() and len(t) > 1]
    for word in words[: size // 3]:
        add(word.lower())
    for piece in pieces[: size // 8]:
        add("##" + piece.lower())
    for ch in chars:
        add("##" + ch)
    n = 0
    while len(vocab) < size:  # the rest: more English words, as the real vocabulary ends
        add(words[size // 3 + n].lower() if size // 3 + n < len(words) else f"[unused{100 + n}]")
        n += 1
    return vocab


def train_sentencepiece(vocab_size: int) -> bytes:
    """A SentencePiece BPE model of Gemma's kind (byte fallback, digits split, whitespace kept, <pad>=0
    <eos>=1 <bos>=2 <unk>=3), trained on the mixed corpus: the serialized `tokenizer.model`."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, character_coverage=0.9995, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<mask>"], num_threads=1, minloglevel=2,
    )
    return out.getvalue()
