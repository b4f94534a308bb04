"""What ingestion tests share: small generated photos, a gallery reader, Serve-config files for the command line."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def jpeg(seed: int, size=(64, 48)) -> bytes:
    """A small distinct JPEG (smooth gradient + noise, like a tiny photo)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0, 1, w)[None, :, None] * rng.uniform(40, 200, 3)[None, None, :]
    noise = rng.normal(0, 25, (h, w, 3))
    arr = np.clip(base + noise + rng.uniform(0, 55), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def scene(seed: int, size=(320, 240)) -> Image.Image:
    """A small still with structure (a dozen coloured shapes on a ground, light noise): unlike `jpeg`'s gradients,
    two scenes differ in their perceptual hashes as two photos do."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def burst(seed: int, crop: float = 0.06, light: float = 1.15) -> Image.Image:
    """The same scene a moment later: a small crop and a change of light (a burst shot, a near shot)."""
    from PIL import ImageEnhance

    base = scene(seed)
    w, h = base.size
    dx, dy = int(w * crop), int(h * crop)
    return ImageEnhance.Brightness(base.crop((dx, dy, w - dx, h - dy)).resize((w, h))).enhance(light)


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_gallery(kit: Path, lancedb_uri: Path | str, blob_root: Path | str):
    """The gallery the service (or a job) writes for the tiny kit's embedder, opened read-side here."""
    from pipelines.config import embedder_shape
    from storage.gallery import Gallery
    from storage.settings import StorageSettings

    from models.configs import EmbedderConfig

    model = str(kit / "embedder")
    dim, _ = embedder_shape(EmbedderConfig(model=model))
    return Gallery.open(StorageSettings(lancedb_uri=str(lancedb_uri), blob_root=str(blob_root)), dim=dim,
                        embed_model=model)


def write_config(path: Path, kit: Path, data: Path, **ingest) -> Path:
    """serve_config.local.yaml pointed at the test kit and data folder, with ingest overrides."""
    doc = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    args = doc["applications"][0]["args"]
    for role in ("embedder", "writer", "describer", "painter"):
        args[role]["model"]["model"] = str(kit / role)
    args["guard"]["model"].update(model=str(kit / "guard"), image_model=str(kit / "guard_image"))
    args["storage"] = {"lancedb_uri": str(data / "lancedb"), "blob_root": str(data / "blobs")}
    args["ingest"].update(ingest)
    path.write_text(yaml.safe_dump(doc))
    return path


def all_rows(gallery, user: str) -> list[dict]:
    """Every row of a user, page by page through the gallery's cursor."""
    rows, cursor = [], None
    while True:
        page, cursor = gallery.list(user, limit=200, cursor=cursor)
        rows += page
        if not cursor:
            return rows


def job_on_an_unopenable_gallery(tmp: Path, kit: Path, user: str, photos: int, seed: int, **ingest):
    """A command-line job (JobSpec) over `photos` new photos into a data folder whose gallery table
    exists with another schema: the job's writer cannot open it, so the job fails."""
    import lancedb
    import pyarrow as pa

    from models.configs import EmbedderConfig
    from pipelines.config import embedder_shape
    from pipelines.ingest import spec_from_config
    from storage.gallery import table_name

    folder = tmp / "camera"
    folder.mkdir()
    for i in range(photos):
        (folder / f"IMG_{i}.jpg").write_bytes(jpeg(seed + i))
    data = tmp / "data"
    model = str(kit / "embedder")
    dim, _ = embedder_shape(EmbedderConfig(model=model))
    lancedb.connect(str(data / "lancedb")).create_table(
        table_name("gallery", model, dim), schema=pa.schema([("something_else", pa.int64())]))
    return spec_from_config(write_config(tmp / "config.yaml", kit, data, **ingest), user, [str(folder)]), data
