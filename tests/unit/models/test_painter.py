"""Painter on the tiny FLUX stand-in: sizes, seeds, timings, and inputs checked before any work."""

from __future__ import annotations

import numpy as np
import pytest

from models import ModelNotFound, Painter, PainterConfig, PainterInputError



@pytest.fixture(scope="module")
def painter(tiny_kit) -> Painter:
    p = Painter(PainterConfig(model=str(tiny_kit / "painter"), max_sequence_length=32,
                              sizes={"small": "64x64", "medium": "96x96", "large": "128x128"}))
    p.warmup()
    return p


def test_paints_the_requested_size_with_timings(painter):
    r = painter.paint("a red fox in the snow", size="64x96", steps=2, seed=5)
    assert r.image.size == (64, 96) and r.image.mode == "RGB"
    assert r.size == "64x96" and r.seed == 5 and r.steps == 2
    assert set(r.timings) == {"encode_s", "denoise_decode_s", "total_s"}
    assert all(v >= 0 for v in r.timings.values())
    assert painter.random_weights is True


def test_presets_and_default(painter):
    assert painter.paint("a cat", size="medium", steps=1, seed=0).image.size == (96, 96)
    assert painter.paint("a cat", steps=1, seed=0).size == "64x64"


def test_same_seed_same_pixels_other_seed_other_pixels(painter):
    a = np.asarray(painter.paint("lighthouse", size="small", steps=2, seed=11).image)
    b = np.asarray(painter.paint("lighthouse", size="small", steps=2, seed=11).image)
    c = np.asarray(painter.paint("lighthouse", size="small", steps=2, seed=12).image)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seed_is_chosen_and_reported_when_absent(painter):
    r = painter.paint("a boat", steps=1)
    again = painter.paint("a boat", steps=1, seed=r.seed)
    assert np.array_equal(np.asarray(r.image), np.asarray(again.image))


@pytest.mark.parametrize(
    "kwargs, field, match",
    [
        (dict(prompt=""), "prompt", "empty"),
        (dict(prompt="x" * 2001), "prompt", "limit is 2000"),
        (dict(size="huge"), "size", "neither a preset"),
        (dict(size="500x512"), "size", "use 496 or 512"),
        (dict(size="512x8"), "size", "out of range"),
        (dict(size="4096x4096"), "size", "out of range"),
        (dict(steps=0), "steps", "1..50"),
        (dict(steps=51), "steps", "1..50"),
        (dict(guidance=-1.0), "guidance", "out of range"),
        (dict(seed=-3), "seed", "integer"),
    ],
)
def test_bad_inputs_are_refused_before_any_work(tiny_kit, kwargs, field, match):
    # A fresh painter: nothing may load before the inputs are judged.
    p = Painter(PainterConfig(model=str(tiny_kit / "painter")))
    args = {"prompt": "a cat", **kwargs}
    with pytest.raises(PainterInputError, match=match) as info:
        p.paint(args.pop("prompt"), **args)
    assert info.value.field == field and info.value.status == 400
    assert not p.loaded


def test_presets_must_sit_on_the_16_pixel_grid():
    with pytest.raises(ValueError, match="multiples of 16"):
        PainterConfig(model="x/y", sizes={"small": "500x500"})


def test_missing_model_names_the_role(tmp_path):
    with pytest.raises(ModelNotFound, match="painter"):
        Painter(PainterConfig(model=str(tmp_path / "absent"))).load()


def test_a_set_cancel_flag_stops_denoising_at_the_next_step(painter):
    import threading

    from models.base import CANCEL
    from models.errors import Cancelled

    cancel, before = threading.Event(), painter.work_done
    painter.on_work = lambda units: cancel.set()  # cancelled as soon as the first step is done
    token = CANCEL.set(cancel)
    try:
        with pytest.raises(Cancelled):
            painter.paint("a lighthouse", size="small", steps=8, seed=1)
    finally:
        CANCEL.reset(token)
        painter.on_work = None
    assert painter.work_done - before == 1
    assert painter.paint("a lighthouse", size="small", steps=2, seed=1).steps == 2  # free and whole again
