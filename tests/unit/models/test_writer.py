"""Writer on the tiny Qwen2 stand-in: the product calls, chat and streaming, seeds, limits."""

from __future__ import annotations

import pytest

from models import ChatResult, Writer, WriterConfig, WriterInputError



@pytest.fixture(scope="module")
def writer(tiny_kit) -> Writer:
    # Random weights end a greedy answer at once; a few forced tokens give the tests text to compare.
    w = Writer(WriterConfig(model=str(tiny_kit / "writer"), min_new_tokens=6, enhance_max_new_tokens=12,
                            post_max_new_tokens=12, max_new_tokens=12, max_input_tokens=256,
                            max_input_chars=500))
    w.warmup()
    return w


def test_enhance_and_post_text_are_seeded_strings(writer):
    a = writer.enhance_prompt("海边的日落", seed=7)
    assert isinstance(a, str) and a
    assert writer.enhance_prompt("海边的日落", seed=7) == a
    b = writer.post_text("a dog running on a beach at sunset", seed=7)
    assert isinstance(b, str) and b
    assert writer.post_text("a dog running on a beach at sunset", seed=7) == b
    assert writer.random_weights is True


def test_chat_reports_usage_and_finish_reason(writer):
    r = writer.chat([{"role": "user", "content": "hello"}], max_new_tokens=8, seed=1)
    assert isinstance(r, ChatResult)
    assert r.prompt_tokens > 0 and 6 <= r.completion_tokens <= 8
    assert r.finish_reason in {"stop", "length"}
    greedy = [writer.chat([{"role": "user", "content": "hello"}], max_new_tokens=8, temperature=0) for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_stream_yields_the_same_text_as_a_plain_call(writer):
    msgs = [{"role": "user", "content": "write a haiku"}]
    plain = writer.chat(msgs, max_new_tokens=10, seed=3)
    pieces = list(writer.chat(msgs, max_new_tokens=10, seed=3, stream=True))
    assert len(pieces) >= 2
    assert "".join(pieces) == plain.text


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda w: w.enhance_prompt(""), "text"),
        (lambda w: w.enhance_prompt("   \n"), "text"),
        (lambda w: w.enhance_prompt("长" * 501), "text"),
        (lambda w: w.post_text(""), "description"),
        (lambda w: w.chat([]), "messages"),
        (lambda w: w.chat([{"role": "robot", "content": "hi"}]), "messages"),
        (lambda w: w.chat([{"role": "user", "content": "hi"}], max_new_tokens=0), "max_new_tokens"),
        (lambda w: w.chat([{"role": "user", "content": "hi"}], max_new_tokens=10_000), "max_new_tokens"),
        (lambda w: w.chat([{"role": "user", "content": "hi"}], temperature=3.0), "temperature"),
        (lambda w: w.chat([{"role": "user", "content": "word " * 90}] * 5), "messages"),
    ],
)
def test_bad_inputs_raise_typed_errors(writer, call, field):
    with pytest.raises(WriterInputError) as info:
        call(writer)
    assert info.value.field == field
    assert info.value.status == 400


def test_a_set_cancel_flag_stops_generation_at_the_next_token(writer):
    import threading

    from models.base import CANCEL
    from models.errors import Cancelled

    cancel, before = threading.Event(), writer.work_done
    writer.on_work = lambda units: cancel.set() if writer.work_done - before >= 2 else None
    token = CANCEL.set(cancel)
    try:
        with pytest.raises(Cancelled):
            writer.chat([{"role": "user", "content": "hello"}], max_new_tokens=12, seed=0)
    finally:
        CANCEL.reset(token)
        writer.on_work = None
    assert writer.work_done - before == 2  # the token on which the flag was seen ended it
    assert writer.chat([{"role": "user", "content": "hello"}], max_new_tokens=4, seed=0).completion_tokens == 4
