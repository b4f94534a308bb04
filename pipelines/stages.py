"""The two Ray Data stages of an ingestion job (pipelines.run builds the dataset from them).

Read (CPU tasks, `admit_batch`): read each file, hash it, skip what the user's gallery or this attempt
already has (found by hash before any decode), check, decode and store the blobs of the rest, and hand
the pixels the image tower sees to the embed stage. Embed (an actor pool, `EmbedImages`): each actor
loads the model once and turns a batch's new images into unit vectors.

Each file comes out as one row: new, known, duplicate or error (with its code and message).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from models.configs import EmbedderConfig
from pipelines.jobs import ledger
from pipelines.sources import EntryReader
from pipelines.writer import writer_call
from storage.blobs import open_blob_store, store_image
from storage.errors import AtelierError
from storage.intake import ImageIntake
from storage.duplicates import perceptual_hash
from storage.settings import StorageSettings

log = logging.getLogger("atelier.ingest")

NEW, KNOWN, DUPLICATE, ERROR = "new", "known", "duplicate", "error"
ADMITTED = pa.schema([
    ("index", pa.int64()), ("name", pa.string()), ("content_hash", pa.string()), ("outcome", pa.string()),
    ("code", pa.string()), ("message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("image_uri", pa.string()), ("display_uri", pa.string()), ("pixels", pa.binary()), ("phash", pa.string()),
])


def square_pixels(image: Image.Image, side: int, crop: bool = True) -> bytes:
    """The `side` x `side` RGB bytes the image tower sees: the centre square (CLIP: shortest side to
    `side`, centre crop), or the whole picture resized to the square (Chinese-CLIP, SigLIP: `crop` off)."""
    if not crop:
        return image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).tobytes()
    w, h = image.size
    if min(w, h) != side:
        scale = side / min(w, h)
        image = image.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = image.size
    left, top = (w - side) // 2, (h - side) // 2
    return image.convert("RGB").crop((left, top, left + side, top + side)).tobytes()


# -- stage 1: read, hash, skip known, check + decode + store blobs (CPU tasks) -------------------
class _TaskTools:
    """What a read task needs, opened once per worker process and reused by its later tasks."""

    def __init__(self, storage_json: str, display_max_side: int):
        settings = StorageSettings(**json.loads(storage_json))
        settings = settings.model_copy(update={"display_max_side": display_max_side})
        self.settings = settings
        self.intake = ImageIntake(settings)
        self.blobs = open_blob_store(settings)
        self.ledger = ledger(json.loads(storage_json))


@functools.lru_cache(maxsize=4)
def _task_tools(storage_json: str, display_max_side: int) -> _TaskTools:
    return _TaskTools(storage_json, display_max_side)


def admit_batch(batch: pa.Table, *, job_id: str, attempt: int, user_id: str, storage_json: str, writer,
                table: tuple[str, int], side: int, display_max_side: int, crop: bool = True) -> pa.Table:
    """One row out per file in: new (blobs stored, pixels for the model), known, duplicate or error.

    Which hashes the user already has comes from the GalleryWriter (`writer`), which holds the table
    open: the tasks themselves never open LanceDB.
    """
    tools = _task_tools(storage_json, display_max_side)
    out: list[dict] = []
    raw: dict[int, bytes] = {}
    with EntryReader(tools.settings) as reader:
        for entry in batch.to_pylist():
            row = {"index": entry["index"], "name": entry["name"], "content_hash": "", "outcome": ERROR,
                   "code": entry["code"], "message": entry["message"], "width": 0, "height": 0,
                   "image_uri": "", "display_uri": "", "pixels": b"", "phash": ""}
            out.append(row)
            if entry["code"]:
                continue
            try:
                data = reader.read(entry)
            except AtelierError as exc:
                row.update(code=exc.code, message=exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - an unreadable file is that file's error, never the job's
                row.update(code="read_failed", message=f"the file could not be read ({type(exc).__name__}: {exc})")
                continue
            raw[len(out) - 1] = data
            row["content_hash"] = hashlib.sha256(data).hexdigest()
    hashes = {out[i]["content_hash"] for i in raw}
    known = writer_call(writer.existing_hashes, table, user_id, sorted(hashes)) if hashes else set()
    pairs = [(out[i]["content_hash"], out[i]["index"]) for i in raw if out[i]["content_hash"] not in known]
    claimed = ray.get(tools.ledger.claim.remote(job_id, attempt, pairs)) if pairs else {}
    for i, data in raw.items():
        row = out[i]
        if row["content_hash"] in known:
            row.update(outcome=KNOWN, code="", message="")
            continue
        if claimed.get(row["content_hash"], row["index"]) != row["index"]:
            row.update(outcome=DUPLICATE, code="", message="")
            continue
        try:
            image = tools.intake.admit(data, filename=row["name"], model_size=side)
            keys = store_image(tools.blobs, user_id, image)
            row.update(outcome=NEW, code="", message="", width=image.width, height=image.height,
                       image_uri=keys.original, display_uri=keys.display,
                       pixels=square_pixels(image.model_image, side, crop), phash=perceptual_hash(image.model_image))
        except AtelierError as exc:
            row.update(code=exc.code, message=exc.message)
        except Exception as exc:  # noqa: BLE001 - e.g. a decoder bug on one file: that file's error
            log.warning("job %s: %s failed unexpectedly", job_id, row["name"], exc_info=True)
            row.update(code="decode_failed", message=f"the image could not be processed ({type(exc).__name__})")
    return pa.Table.from_pylist(out, schema=ADMITTED)


# -- stage 2: embed (an actor pool; each actor loads the model once) ----------------------------
class EmbedImages:
    """A batch's new images -> unit vectors (float32 bytes); other rows pass through untouched."""

    def __init__(self, embedder: dict, side: int, guard: dict | None = None):
        # torch loads here, in the embedding actors only: the read tasks, the driver and the CLI import
        # this module and never run the model.
        from models.embedder import Embedder

        self.model = Embedder(EmbedderConfig.model_validate(embedder))
        self.model.load()
        self.side = side
        # The Guard's image classifier (issue 30), when the job has one: each new photo's verdict goes with its row.
        self.guard = None
        if guard is not None:
            from models.configs import GuardConfig
            from models.guard import ImageGuard

            self.guard = ImageGuard(GuardConfig.model_validate(guard))
            self.guard.load()

    def _verdicts(self, pixels: list[bytes]) -> list[str]:
        """Each photo's verdict as JSON ('' when the job has no Guard, or its classifier failed on the photo: the
        row is then stored unchecked, as an upload is when the Guard is down and the policy fails open)."""
        if self.guard is None or not pixels:
            return [""] * len(pixels)
        images = [Image.frombytes("RGB", (self.side, self.side), p) for p in pixels]
        try:
            verdicts = self.guard.check_images(images)
        except Exception:  # noqa: BLE001 - the photos are the user's: stored either way, the verdict is extra
            log.warning("the Guard's image check failed on a batch of %d photos; stored unchecked", len(images),
                        exc_info=True)
            return [""] * len(pixels)
        return [json.dumps(v.as_dict()) for v in verdicts]

    def _embed(self, pixels: list[bytes]) -> np.ndarray:
        images = [Image.frombytes("RGB", (self.side, self.side), p) for p in pixels]
        return self.model.embed_pixels(self.model.preprocess(images))

    def __call__(self, batch: pa.Table) -> pa.Table:
        outcome = batch.column("outcome").to_pylist()
        code = batch.column("code").to_pylist()
        message = batch.column("message").to_pylist()
        pixels = batch.column("pixels").to_pylist()
        vectors = [b""] * len(outcome)
        todo = [i for i, o in enumerate(outcome) if o == NEW]
        if todo:
            try:
                found = list(self._embed([pixels[i] for i in todo]))
            except Exception:  # noqa: BLE001 - find the one image that breaks the batch, keep the rest
                found = []
                for i in todo:
                    try:
                        found.append(self._embed([pixels[i]])[0])
                    except Exception as exc:  # noqa: BLE001
                        found.append(None)
                        outcome[i], code[i] = ERROR, "embed_failed"
                        message[i] = f"the embedding model failed on this image ({type(exc).__name__})"
            for i, vector in zip(todo, found):
                if vector is not None:
                    vectors[i] = np.asarray(vector, dtype=np.float32).tobytes()
        safety = [""] * len(outcome)
        checked = [i for i in todo if outcome[i] == NEW]
        for i, verdict in zip(checked, self._verdicts([pixels[i] for i in checked])):
            safety[i] = verdict
        batch = batch.drop_columns(["pixels"]).append_column("safety", pa.array(safety, pa.string()))
        for name, values in (("outcome", outcome), ("code", code), ("message", message)):
            batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
        return batch.append_column("vector", pa.array(vectors, pa.binary()))

