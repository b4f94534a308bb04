"""One way to call a model (issue 27): a method marked `@operation` is what the gateway may reach, by
name, over Serve and in process alike; nothing else is."""

from __future__ import annotations

import asyncio

import pytest

from deployments.service.models import LocalModels
from models import Describer, Embedder, Painter, Writer



def test_every_role_answers_info_and_ready_and_marks_its_own_operations():
    for cls, own in ((Embedder, {"text_vector", "image_vector", "embed_texts", "image_size"}),
                     (Writer, {"to_english", "chat", "chat_stream"}), (Describer, {"describe", "answer"}),
                     (Painter, {"generate", "size_of"})):
        ops = cls.operations()
        assert {"info", "ready"} | own <= set(ops), (cls, sorted(ops))
        assert "load" not in ops and "_prepare" not in ops and "paint" not in ops


def test_a_subclass_that_overrides_an_operation_keeps_it_marked():
    class Quiet(Writer):
        def to_english(self, text, **kw):
            return "quiet"

    assert "to_english" in Quiet.operations()
    assert Embedder.operations()["text_vector"].batch == "text_vectors"
    assert Writer.operations()["chat_stream"].stream


def test_the_in_process_gateway_calls_operations_and_refuses_anything_else(tiny_kit):
    from models import PainterConfig

    painter = Painter(PainterConfig(model=str(tiny_kit / "painter"), num_threads=1))
    gateway = LocalModels(None, None, None, painter)
    assert asyncio.run(gateway.call("painter", "size_of", "a cat", "128x64", 2, None)) == "128x64"
    with pytest.raises(LookupError, match="no operation 'paint'"):
        asyncio.run(gateway.call("painter", "paint", "a cat"))  # a method, but not an operation
    with pytest.raises(LookupError):
        asyncio.run(gateway.call("painter", "load"))
