"""The search query path per embedder kind (in-process, real tiny models): a bilingual embedder embeds a
Chinese query as it is with no Writer call; query expansion, when on, fuses the translation's vector
with the direct one; an English-only embedder searches the Writer's translation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from http_helpers import CountingWriter



@pytest.fixture(scope="module")
def clip(tiny_kit):
    from models import Embedder, EmbedderConfig

    e = Embedder(EmbedderConfig(model=str(tiny_kit / "embedder_clip"), num_threads=1))
    e.warmup()
    return e


def _service(tiny_models, tmp_path, *, embedder=None, enhance_search=None, fail=False):
    from deployments.assemble import product_service
    from deployments.config import IngressSpec, IngressTuning
    from deployments.service.models import LocalModels
    from storage.settings import StorageSettings

    writer = CountingWriter(tiny_models["writer"], fail=fail, sample=True)
    models = LocalModels(embedder or tiny_models["embedder"], writer, tiny_models["describer"], tiny_models["painter"])
    service = product_service(models, ingress=IngressSpec(), storage=StorageSettings(lancedb_uri=str(tmp_path)),
                              ingest=None, in_process=True, tuning=IngressTuning(enhance_search=enhance_search))
    return service, writer


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_bilingual_embedder_embeds_chinese_as_it_is_without_the_writer(tiny_models, tmp_path):
    service, writer = _service(tiny_models, tmp_path)
    assert tiny_models["embedder"].multilingual
    vector, embedded, english, degraded = asyncio.run(service.search.query_vector("海边的日落", user="alice"))
    assert (embedded, english, degraded) == ("海边的日落", None, False)
    assert writer.calls == 0
    np.testing.assert_allclose(vector.values, tiny_models["embedder"].embed_texts(["海边的日落"])[0], atol=1e-6)
    assert vector.model == tiny_models["embedder"].model_id


def test_bilingual_expansion_fuses_the_translation_never_replaces_the_query(tiny_models, tmp_path):
    service, writer = _service(tiny_models, tmp_path, enhance_search=True)
    vector, embedded, english, degraded = asyncio.run(service.search.query_vector("海边的日落", user="alice"))
    assert writer.calls == 1 and embedded == "海边的日落" and not degraded
    direct = tiny_models["embedder"].embed_texts(["海边的日落"])[0]
    assert english and english != "海边的日落"
    translated = tiny_models["embedder"].embed_texts([english])[0]
    np.testing.assert_allclose(vector.values, _unit(direct + translated), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vector.values), 1.0, atol=1e-5)
    assert not np.allclose(vector.values, translated, atol=1e-3)


def test_bilingual_expansion_with_a_failing_writer_is_the_direct_vector(tiny_models, tmp_path):
    service, writer = _service(tiny_models, tmp_path, enhance_search=True, fail=True)
    vector, embedded, english, degraded = asyncio.run(service.search.query_vector("城市夜景", user="alice"))
    assert writer.calls == 1 and (embedded, english, degraded) == ("城市夜景", None, True)
    np.testing.assert_allclose(vector.values, tiny_models["embedder"].embed_texts(["城市夜景"])[0], atol=1e-6)


def test_english_only_embedder_searches_the_translation(tiny_models, clip, tmp_path):
    service, writer = _service(tiny_models, tmp_path, embedder=clip)
    assert not clip.multilingual
    vector, embedded, english, degraded = asyncio.run(service.search.query_vector("海边的日落", user="alice"))
    assert writer.calls == 1 and not degraded
    assert english and embedded == english != "海边的日落"
    np.testing.assert_allclose(vector.values, clip.embed_texts([english])[0], atol=1e-6)
    assert vector.model == clip.model_id
    # English text goes to CLIP as it is, with no Writer call and no translation to report.
    _, embedded, english, _ = asyncio.run(service.search.query_vector("a dog on the beach", user="alice"))
    assert (embedded, english, writer.calls) == ("a dog on the beach", None, 1)


def test_english_only_embedder_with_a_failing_writer_degrades(tiny_models, clip, tmp_path):
    service, _ = _service(tiny_models, tmp_path, embedder=clip, fail=True)
    _, embedded, english, degraded = asyncio.run(service.search.query_vector("海边的日落", user="alice"))
    assert (embedded, english, degraded) == ("海边的日落", None, True)


def test_search_answer_says_what_was_embedded(surface):
    from http_helpers import auth, png

    client, _ = surface
    h = auth(surface)
    r = client.post("/api/images", headers=h, files={"file": ("p.png", png(7001), "image/png")},
                    data={"caption": "海边的日落"})
    assert r.status_code in (200, 201), r.text
    body = client.get("/api/search", headers=h, params={"q": "日落", "k": 3}).json()
    assert body["query"] == {"text": "日落", "embedded": "日落", "english": None}
    assert body["degraded"] is False and body["results"]
