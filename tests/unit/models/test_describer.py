"""Describer on the tiny InternVL stand-in, loaded through AutoModelForImageTextToText."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models import Describer, DescriberConfig, DescriberInputError, ModelNotFound



@pytest.fixture(scope="module")
def describer(tiny_kit) -> Describer:
    d = Describer(DescriberConfig(model=str(tiny_kit / "describer"), temperature=0.8, min_new_tokens=4,
                                  max_new_tokens=8))
    d.warmup()
    return d


def _photo(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (90, 120, 3), dtype=np.uint8))


def test_describes_an_image_reproducibly(describer):
    from transformers import InternVLForConditionalGeneration

    assert isinstance(describer._model, InternVLForConditionalGeneration)
    text = describer.describe(_photo(0), seed=4)
    assert isinstance(text, str) and text
    assert describer.describe(_photo(0), seed=4) == text
    assert describer.random_weights is True


def test_accepts_any_mode_and_an_instruction(describer):
    assert isinstance(describer.describe(_photo(1).convert("L"), "What colour dominates?", seed=1), str)
    assert isinstance(describer.describe(_photo(1).convert("RGBA"), seed=1), str)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda d: d.describe(b"GIF89a..."), "image"),
        (lambda d: d.describe(None), "image"),
        (lambda d: d.describe(_photo(0), "  "), "instruction"),
        (lambda d: d.describe(_photo(0), "x" * 2001), "instruction"),
        (lambda d: d.describe(_photo(0), max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_inputs_raise_typed_errors(describer, call, field):
    with pytest.raises(DescriberInputError) as info:
        call(describer)
    assert info.value.field == field and info.value.status == 400


def test_missing_model_names_the_role(tmp_path):
    with pytest.raises(ModelNotFound, match="describer"):
        Describer(DescriberConfig(model=str(tmp_path / "absent"))).load()


def test_answer_reports_tokens_and_why_it_stopped(describer):
    answer = describer.answer(_photo(2), "What is here?", max_new_tokens=5, seed=1)
    assert answer.text == describer.describe(_photo(2), "What is here?", max_new_tokens=5, seed=1)
    assert 4 <= answer.completion_tokens <= 5
    assert answer.finish_reason == ("length" if answer.completion_tokens == 5 else "stop")
    # The prompt holds the image's tokens as well as the question's.
    assert answer.prompt_tokens > 2 * len("What is here?".split()) + 16
