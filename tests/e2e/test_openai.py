"""The OpenAI-compatible surface, driven by the official `openai` client, unchanged, over real HTTP."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
from PIL import Image



@pytest.fixture(scope="module")
def client(service):
    # No client-side retries: a failure must show here, not be hidden behind a second try.
    return openai.OpenAI(base_url=service.base_url + "/v1", api_key=service.keys["alice"], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_ids(client) -> dict[str, str]:
    return {m.role: m.id for m in client.models.list().data}


def _png(size=(64, 64), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def test_models_lists_the_roles(client, model_ids, tiny_kit):
    models = client.models.list().data
    assert {m.owned_by for m in models} == {"atelier"}
    # The checkpoints are local folders: users see the public names, never the paths.
    assert model_ids == {role: f"atelier-{role}" for role in ("embedder", "writer", "describer", "painter", "guard")}
    assert client.models.retrieve(model_ids["writer"]).id == model_ids["writer"]
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"
    assert "atelier-writer" in err.value.message and str(tiny_kit) not in err.value.message


def test_embeddings_decode_from_the_default_base64(client, model_ids, tiny_kit):
    from models.configs import vector_shape

    dim, _ = vector_shape(json.loads((tiny_kit / "embedder" / "config.json").read_text()))
    one = client.embeddings.create(model=model_ids["embedder"], input="a red bicycle by the sea")
    assert one.model == model_ids["embedder"] and len(one.data) == 1
    vec = np.asarray(one.data[0].embedding)
    assert vec.shape == (dim,) and np.isclose(np.linalg.norm(vec), 1.0, atol=1e-4)

    texts = ["a red bicycle by the sea", "一只橘猫", "mountains at dawn"]
    many = client.embeddings.create(model=model_ids["embedder"], input=texts)
    assert [d.index for d in many.data] == [0, 1, 2]
    vecs = np.asarray([d.embedding for d in many.data])
    assert vecs.shape == (3, dim)
    np.testing.assert_allclose(vecs[0], vec, atol=1e-5)  # alone or in a list, the same text gives the same vector
    assert not np.allclose(vecs[0], vecs[2])

    # The float wire format carries the same numbers as the base64 one.
    floats = client.embeddings.create(model=model_ids["embedder"], input=texts, encoding_format="float")
    np.testing.assert_allclose(np.asarray([d.embedding for d in floats.data]), vecs, atol=1e-6)

    # usage counts the embedder's tokens, as the model's own tokenizer does (SigLIP 2's: lower-cased text,
    # its end token included, its padding to 64 not).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_kit / "embedder")
    expected = sum(len(tok(t.lower())["input_ids"]) for t in texts)
    assert expected < 3 * 64
    assert many.usage.prompt_tokens == many.usage.total_tokens == expected


@pytest.mark.parametrize(
    "kwargs, error, code",
    [
        ({"input": [[101, 2023, 102]]}, openai.BadRequestError, "invalid_input"),
        ({"input": []}, openai.BadRequestError, "invalid_input"),
        ({"input": ["word"] * 257}, openai.BadRequestError, "invalid_embedder_input"),  # over the per-call limit
        ({"input": ["fine", " "]}, openai.BadRequestError, "invalid_embedder_input"),
        ({"input": "hi", "model": "text-embedding-3-small"}, openai.NotFoundError, "model_not_found"),
        ({"input": "hi", "dimensions": 3}, openai.BadRequestError, "invalid_input"),
    ],
)
def test_embeddings_bad_input(client, model_ids, kwargs, error, code):
    kwargs.setdefault("model", model_ids["embedder"])
    with pytest.raises(error) as err:
        client.embeddings.create(**kwargs)
    assert err.value.code == code and err.value.message


def test_images_as_b64_json_are_pngs_of_the_asked_size(client, model_ids):
    out = client.images.generate(model=model_ids["painter"], prompt="a lighthouse at night", n=2, size="64x64",
                                 response_format="b64_json", extra_body={"seed": 11})
    assert len(out.data) == 2 and out.created > 0
    pngs = [base64.b64decode(d.b64_json) for d in out.data]
    for png, d in zip(pngs, out.data):
        assert Image.open(io.BytesIO(png)).size == (64, 64)
        assert d.revised_prompt == "a lighthouse at night"
    raw = out.to_dict()
    assert raw["random_weights"] is True and raw["size"] == "64x64"
    assert [d["seed"] for d in raw["data"]] == [11, 12]
    # Seeded, so repeatable: the same seed paints the same pixels.
    again = client.images.generate(prompt="a lighthouse at night", size="64x64", response_format="b64_json",
                                   extra_body={"seed": 12})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(again.data[0].b64_json)))),
                          np.asarray(Image.open(io.BytesIO(pngs[1]))))


@pytest.fixture(scope="module")
def generated_url(client) -> str:
    """A url-format generation of alice's: stored in her gallery, answered as a signed absolute URL."""
    out = client.images.generate(prompt="a small boat", size="96x64", response_format="url", extra_body={"seed": 4})
    return out.data[0].url


def test_images_as_url_are_stored_and_signed(service, generated_url):
    assert generated_url.startswith(service.base_url + "/api/images/") and "sig=" in generated_url
    r = httpx.get(generated_url, timeout=60)  # no key: the signature is the credential
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
    assert Image.open(io.BytesIO(r.content)).size == (96, 64)
    img_id = generated_url.split("/api/images/")[1].split("/")[0]
    with service.client() as c:
        row = c.get(f"/api/images/{img_id}").json()
    assert row["source"] == "generated" and row["caption"] == "a small boat"
    with service.client("bob") as c:
        assert c.get(f"/api/images/{img_id}").status_code == 404


@pytest.mark.parametrize("size", ["100x100", "32x32", "huge"])
def test_images_bad_size_is_400_naming_the_field(client, size):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="a cat", size=size)
    assert err.value.body["field"] == "size"


def test_chat_completion(client, model_ids):
    out = client.chat.completions.create(
        model=model_ids["writer"], max_tokens=12, seed=1,
        messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}],
    )
    assert out.object == "chat.completion" and out.model == model_ids["writer"] and out.id.startswith("chatcmpl-")
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 5 and 1 <= out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.model_extra["random_weights"] is True


def test_chat_stream_matches_the_plain_answer(client, model_ids):
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    # Seeded sampling: the same seed draws the same tokens whether they are streamed or not.
    plain = client.chat.completions.create(model=model_ids["writer"], messages=messages, max_completion_tokens=10,
                                           temperature=0.8, seed=3)
    chunks = list(client.chat.completions.create(model=model_ids["writer"], messages=messages,
                                                 max_completion_tokens=10, temperature=0.8, seed=3, stream=True))
    assert len(chunks) >= 3
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() and text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_chat_stream_is_sse_ending_in_done(service, model_ids):
    body = {"model": model_ids["writer"], "stream": True, "max_tokens": 9,
            "messages": [{"role": "user", "content": "hello"}]}
    with service.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "chat.completion.chunk" for d in data[:-1])


def test_chat_stream_with_bad_input_is_a_json_400(client, model_ids):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_ids["writer"], stream=True,
                                       messages=[{"role": "user", "content": "   "}])
    assert err.value.body["field"] == "messages[0].content"


def test_vision_chat_with_a_data_uri(client, model_ids):
    out = client.chat.completions.create(
        model=model_ids["describer"], max_tokens=10, seed=2,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What colour is this picture?"},
            {"type": "image_url", "image_url": {"url": _data_uri(_png())}},
        ]}],
    )
    assert out.model == model_ids["describer"]
    assert out.choices[0].message.content.strip() and out.choices[0].finish_reason in ("stop", "length")
    # The prompt counts the image's tokens too, so it is longer than the question alone.
    assert out.usage.prompt_tokens > 20 and 1 <= out.usage.completion_tokens <= 10


@pytest.mark.parametrize(
    "url, status, code",
    [
        ("http://example.com/cat.png", 400, "url_not_allowed"),
        ("file:///etc/passwd", 400, "url_not_allowed"),
        ("http://127.0.0.1:8265/api/jobs", 400, "url_not_allowed"),
        (_data_uri(b"plain text, not a picture"), 415, "not_an_allowed_image"),
        (_data_uri(_png(), mime="image/svg+xml"), 400, "not_an_allowed_image"),
        ("data:image/png;base64,@@@", 400, "invalid_input"),
    ],
)
def test_vision_refuses_other_urls_without_fetching(client, url, status, code):
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="describer", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert err.value.status_code == status and err.value.code == code
    assert err.value.body["field"] == "messages[0].content[1].image_url"


def test_vision_reads_the_callers_own_gallery_url_only(service, client, generated_url):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe it."},
                                             {"type": "image_url", "image_url": {"url": generated_url}}]}]
    out = client.chat.completions.create(model="describer", messages=messages, max_tokens=6, seed=1)
    assert out.choices[0].message.content.strip()
    relative = generated_url[len(service.base_url):]  # the path alone is this service's URL too
    messages[0]["content"][1]["image_url"]["url"] = relative
    assert client.chat.completions.create(model="describer", messages=messages, max_tokens=6, seed=1).choices
    bob = openai.OpenAI(base_url=service.base_url + "/v1", api_key=service.keys["bob"], max_retries=0)
    with pytest.raises(openai.NotFoundError):  # alice's link, even validly signed, is not bob's image
        bob.chat.completions.create(model="describer", messages=messages, max_tokens=6)


def test_wrong_key_is_401(service, model_ids):
    bad = openai.OpenAI(base_url=service.base_url + "/v1", api_key="atl_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model=model_ids["writer"], messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "unauthorized"


def test_moderations_through_serve(client, model_ids):
    """The Guard deployment answers /v1/moderations through Serve, in OpenAI's shape (issue 30.5)."""
    answer = client.moderations.create(input=["a quiet harbour at dawn", "窗台上的一只猫"])
    assert answer.model == model_ids["guard"] and len(answer.results) == 2
    for result in answer.results:
        assert isinstance(result.flagged, bool) and 0.0 <= result.category_scores.violence <= 1.0
        assert result.category_applied_input_types.violence == ["text"]
    image = client.moderations.create(input=[{"type": "image_url", "image_url": {"url": _data_uri(_png())}}])
    assert image.results[0].category_applied_input_types.sexual == ["image"]
