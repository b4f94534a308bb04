"""Text as the full-text index reads it: Chinese cut into words by jieba, its function words left out.

LanceDB's tokenizers split on spaces and punctuation, which leaves a Chinese sentence as one token;
cutting it here (and the query the same way) lets "日落" find "海边的日落". Left alone, the cut
also keeps 的, 在, 我 ... as words of their own, and the text leg of a search then ranks "蓝色的天空"
for "红色的汽车" because both hold 的. So Chinese stop words are dropped from both sides.

The stop words are stopwordsiso's Chinese list (PyPI, MIT) less its content words: a listed word is
dropped only where jieba's own dictionary tags it a function word (particle, preposition,
conjunction, pronoun, adverb, interjection) or does not know it (punctuation, set phrases). The
list alone would also drop 人, 大, 小, 看, 日, 年 and the numbers, which a photo's caption means.
Text without CJK characters is returned unchanged: English keeps what the index does to it
(lower case, stemming, no stop words removed).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

# Han, kana and hangul: scripts written without spaces between words.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# jieba's part-of-speech tags (ICTCLAS) of function words: u* particles (的 了 着 地 得 过),
# p prepositions, c conjunctions, r* pronouns, d adverbs, y modal particles, e interjections.
_FUNCTION_TAGS = ("u", "p", "c", "r", "d", "y", "e")


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """The Chinese words the full-text index and its queries leave out (see the module's doc)."""
    import stopwordsiso

    listed = stopwordsiso.stopwords("zh")
    tags: dict[str, str] = {}
    with _jieba().get_dict_file() as f:  # lines of "word frequency tag"
        for line in f:
            parts = line.decode("utf-8").split()
            if len(parts) == 3 and parts[0] in listed:
                tags[parts[0]] = parts[2]
    return frozenset(w for w in listed if w not in tags or tags[w].startswith(_FUNCTION_TAGS))


def words_for_search(text: str) -> str:
    """Text as the full-text index sees it: Chinese cut into words by jieba with its stop words
    removed, text without CJK characters unchanged."""
    if not CJK.search(text):
        return text
    stop = stop_words()
    return " ".join(w for w in _jieba().cut_for_search(text) if w.strip() and w not in stop)


def warm_up() -> None:
    """Load jieba's dictionary and the stop words (a few seconds) before the first search needs them."""
    words_for_search("预热")
