"""Texts for the embedding benchmarks: search queries, captions and whole posts of realistic, varied length."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

from benchmarks.checks import check

SUBJECTS = [
    "a golden retriever puppy", "an old fisherman mending his nets", "two kids racing on bicycles",
    "a steaming bowl of tonkotsu ramen", "a red vintage convertible", "the Eiffel Tower",
    "a barista pouring latte art", "a snow leopard on a rock", "a bride and groom dancing",
    "a stack of pancakes with blueberries", "a street musician playing the violin", "a cat asleep on a windowsill",
    "a lighthouse on a cliff", "a woman in a yellow raincoat", "hot air balloons over a valley",
    "a mountain biker mid-jump", "a bookshelf full of old novels", "a neon-lit noodle stall",
    "a sunflower field", "a toddler blowing out birthday candles", "my grandmother's garden",
    "a bullet train passing Mount Fuji", "homemade sourdough bread", "a skateboarder in an empty pool",
]
SETTINGS = [
    "at sunset", "in the rain", "on a foggy morning", "under cherry blossoms", "at a crowded night market in Taipei",
    "by the sea", "in a minimalist white studio", "on a snowy mountain ridge", "in golden hour light",
    "inside a cozy wooden cabin", "on a rooftop in Brooklyn", "during a thunderstorm", "at a farmers market",
]
STYLES = [
    "shot on 35mm film", "watercolor illustration", "cinematic lighting, shallow depth of field", "flat vector art",
    "black and white photograph", "oil painting, impressionist brush strokes", "ultra-detailed 8k render",
    "polaroid snapshot with light leaks", "isometric 3D, pastel colours", "",
]
POSTS = [
    "Finally made it to the summit after six hours of hiking, legs are jelly but the view was worth every step.",
    "Sunday brunch with the best people. Trying the new place downtown, the coffee is unreal and the staff are lovely.",
    "Throwback to last summer's road trip along the coast, can't wait to do it again with the whole crew this year!",
    "New recipe experiment: miso caramel cookies. Half of them vanished before I could take a picture, sorry.",
    "First snow of the season and the dog has absolutely lost his mind. Ten out of ten would recommend winter.",
]
HASHTAGS = ["#travel", "#foodie", "#sunset", "#photography", "#weekendvibes", "#nofilter", "#homemade", "#dogsofinstagram"]


def varied_texts(n: int = 512, seed: int = 5) -> list[str]:
    """Search queries, image captions and whole posts: 2 to 100+ CLIP tokens, so batches pad like real traffic."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        kind = rng.random()
        subject = rng.choice(SUBJECTS)
        if kind < 0.3:  # a search box query
            texts.append(" ".join(subject.split()[: rng.randint(2, 5)]))
        elif kind < 0.8:  # a generation prompt or caption
            style = rng.choice(STYLES)
            texts.append(f"{subject} {rng.choice(SETTINGS)}" + (f", {style}" if style else ""))
        else:  # a post, longer than CLIP's 77-token context now and then
            tags = " ".join(rng.sample(HASHTAGS, rng.randint(1, 4)))
            texts.append(f"{rng.choice(POSTS)} {subject} {rng.choice(SETTINGS)}. {tags}")
    return texts


def text_stats(texts: list[str], kit: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(kit / "embedder_clip")  # CLIP's tokens (its 77-token context)
    lengths = [len(ids) for ids in tok(texts, truncation=False)["input_ids"]]
    return {"count": len(texts), "distinct": len(set(texts)), "tokens_min": min(lengths),
            "tokens_median": int(statistics.median(lengths)), "tokens_max": max(lengths),
            "over_77": sum(n > 77 for n in lengths)}


# Search-box queries in both languages the product serves, composed so that every one is distinct.
ZH_SUBJECTS = ["海边的日落", "一只橘猫", "雪山", "城市夜景", "樱花", "一碗拉面", "老街的咖啡馆", "金毛犬", "热气球",
               "外婆的菜园", "地铁站", "稻田", "灯塔", "生日蛋糕", "滑板少年", "古镇", "向日葵", "图书馆"]
ZH_SETTINGS = ["", "在雨中", "清晨", "黄昏时", "下雪天", "夜市里", "在公园", "窗边", "山顶上", "海边", "秋天", "周末"]
ZH_STYLES = ["", "的照片", "，胶片风格", "，黑白", "，航拍", "，特写", "，全景"]


def queries(n: int, lang: str, seed: int = 11) -> list[str]:
    """`n` distinct search queries in Chinese (`zh`) or English (`en`): so no answer or vector cache can
    serve a repeat (past the combinations, a counter makes each one unique)."""
    rng = random.Random(seed)
    if lang == "zh":
        pool = [f"{s}{t}{u}" for s in ZH_SUBJECTS for t in ZH_SETTINGS for u in ZH_STYLES]
    else:
        pool = [f"{s} {t}".strip() for s in SUBJECTS for t in SETTINGS + [""]]
    rng.shuffle(pool)
    out = pool[:n]
    while len(out) < n:
        out.append(f"{pool[len(out) % len(pool)]} {len(out)}")
    check(len(set(out)) == len(out) == n, f"{n} {lang} queries asked, {len(set(out))} distinct made")
    return out
