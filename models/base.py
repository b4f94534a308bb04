"""What every model role shares: typed config, locating the checkpoint, device/dtype choice, load-once."""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar
from urllib.parse import urlparse

import torch

from .configs import MARKER, ModelConfig
from .errors import ModelNotFound, ModelUnavailable

# The cancel flag of the call running in this context. The serving shell sets it before handing a
# call to a worker thread (asyncio.to_thread copies the context) and sets the event when the
# request is cancelled; the models look at it between denoising steps and generated tokens.
CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("atelier_cancel", default=None)


@dataclass(frozen=True)
class Operation:
    """How the gateway may call a model method (`deployments.service.models`: `call(role, op, ...)`).

    - `batch`: the name of a method taking a list and answering one value per item; in Serve,
      concurrent single calls of this operation are grouped into one call of that method.
    - `stream`: the method returns an iterator of pieces (call it with `stream(role, op, ...)`)."""

    name: str
    batch: str | None = None
    stream: bool = False


def operation(fn: Callable | None = None, *, batch: str | None = None, stream: bool = False):
    """Marks a model method as an operation callers may reach through the gateway. Its answer is what
    travels (picklable, shaped for the caller): adding an operation touches its model class and its
    caller, and nothing in between."""

    def mark(f: Callable) -> Callable:
        f.__atelier_operation__ = Operation(f.__name__, batch=batch, stream=stream)
        return f

    return mark(fn) if fn is not None else mark

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
BUILD_HINT = "build the offline stand-ins with `python -m models.kit build --size tiny checkpoints/tiny`"


class ModelRole:
    """A model with a fixed life cycle: configure -> load() once -> warmup() -> typed calls."""

    role: ClassVar[str] = "model"

    # What a role counts as it works ("steps", "tokens"), for metrics and for cancellation tests.
    work_unit: ClassVar[str | None] = None

    def __init__(self, config: ModelConfig):
        self.config = config
        self.work_done = 0
        self.on_work: Any = None  # the serving shell's hook: called with each unit of work done
        self._lock = threading.RLock()
        self._loaded = False
        self._random_weights = False
        self._device = torch.device("cpu")
        self._dtype = torch.float32

    # -- life cycle -------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the checkpoint; safe to call twice and from several threads."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if self.config.num_threads:
                torch.set_num_threads(self.config.num_threads)
            self._device, self._dtype = _resolve_device(self.config)
            self._load_checkpoints()
            self._loaded = True

    def _load_checkpoints(self) -> None:
        """Locate and load the role's checkpoint (a role that loads only part of itself overrides this)."""
        source = self._locate()
        try:
            self._load(source)
        except ModelNotFound:
            raise
        except (OSError, ValueError) as exc:
            raise ModelNotFound(
                f"{self.role}: could not load {self.config.model!r} ({exc}); {BUILD_HINT} "
                f"and point the {self.role}'s `model` at checkpoints/tiny/{self.role}"
            ) from exc
        self._random_weights = self._detect_random_weights(source)

    def warmup(self) -> None:
        """One small real call, so the first user request does not pay for lazy initialisation."""
        self.load()
        self._warmup()

    def check_health(self) -> None:
        """Raise when the role cannot serve (used by Serve's health check)."""
        if not self._loaded:
            raise ModelUnavailable(f"{self.role} is not loaded")

    # -- operations -------------------------------------------------------------------------------
    @classmethod
    def operations(cls) -> dict[str, Operation]:
        """Every method of this role marked with `@operation`, by name."""
        return _operations_of(cls)

    def resolve(self, name: str) -> tuple[Callable[..., Any], Operation]:
        """The bound method of an operation and how to call it; LookupError for anything not marked
        (a caller's bug: the gateway never reaches an unmarked method)."""
        spec = self.operations().get(name)
        if spec is None:
            raise LookupError(f"the {self.role} has no operation {name!r}")
        return getattr(self, name), spec

    @operation
    def info(self) -> dict:
        """What the service shows users about this model (and whether its answers are noise)."""
        return {"role": self.role, "model_id": self.model_id, "name": self.public_name,
                "random_weights": self.random_weights, **self.facts()}

    @operation
    def ready(self) -> bool:
        """True once the role can serve (readiness probes); raises like check_health otherwise."""
        self.check_health()
        return True

    def _did_work(self, units: int = 1) -> None:
        self.work_done += units
        if self.on_work is not None:
            self.on_work(units)

    def facts(self) -> dict:
        """What a role tells about itself beyond its name (the Embedder: family, languages, dimension)."""
        return {}

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def model_id(self) -> str:
        """Where the checkpoint came from (hub id or folder): for caches and logs, never shown to users."""
        return self.config.model

    @property
    def public_name(self) -> str:
        """The name users see: the configured one, else the hub id, else `atelier-<role>` for a folder."""
        return public_name(self.config.served_name, self.config.model, f"atelier-{self.role}")

    @property
    def random_weights(self) -> bool:
        """True when the checkpoint is an offline random-weight stand-in: its outputs are noise."""
        return self._random_weights

    @property
    def device(self) -> torch.device:
        return self._device

    # -- for subclasses ---------------------------------------------------------------------------
    def _load(self, source: str) -> None:
        raise NotImplementedError

    def _warmup(self) -> None:
        raise NotImplementedError

    def _pretrained_kwargs(self, model: str | None = None, revision: str | None = None) -> dict[str, Any]:
        """Arguments every from_pretrained call of a role shares: provenance rules live here. `model` and
        `revision` name a second checkpoint of the role (the Guard's image classifier); default: `config`'s."""
        model, revision = (self.config.model, self.config.revision) if model is None else (model, revision)
        kw: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
        if revision and not Path(model).is_dir():
            kw["revision"] = revision
        return kw

    def _locate(self, model: str | None = None, revision: str | None = None, *, setting: str = "model",
                stand_in: str | None = None) -> str:
        """Return what to hand to from_pretrained, or fail fast naming what was tried. By default the role's
        `model`; a role with a second checkpoint passes it, the config key it came from and its kit folder."""
        model, revision = (self.config.model, self.config.revision) if model is None else (model, revision)
        stand_in = stand_in or self.role
        if Path(model).expanduser().is_dir():
            return str(Path(model).expanduser())
        if not _HUB_ID.match(model):
            raise ModelNotFound(
                f"{self.role}: no folder at {model!r} and it is not a hub id (org/name); {BUILD_HINT} "
                f"and point the {self.role}'s `{setting}` at checkpoints/tiny/{stand_in}"
            )
        if _in_hf_cache(model, revision):
            return model
        if _hub_offline():
            raise ModelNotFound(
                f"{self.role}: {model!r} is not in the Hugging Face cache ({_hf_cache_dir()}) and HF_HUB_OFFLINE "
                f"is set; download it on a connected host, or {BUILD_HINT}"
            )
        if not _hub_reachable():
            raise ModelNotFound(
                f"{self.role}: {model!r} is not in the Hugging Face cache ({_hf_cache_dir()}) and the hub "
                f"({_hub_endpoint()}) cannot be reached from here; {BUILD_HINT}"
            )
        return model

    def _detect_random_weights(self, source: str) -> bool:
        """Whether `source` (what _locate returned, for any of the role's checkpoints) is a kit stand-in."""
        marker = Path(source) / MARKER
        if marker.is_file():
            try:
                return bool(json.loads(marker.read_text()).get("random_weights", True))
            except ValueError:
                return True
        return False


def public_name(served_name: str | None, source: str, fallback: str) -> str:
    """The configured name, else the hub id, else `fallback`: a local folder's path is never shown."""
    if served_name:
        return served_name
    if _HUB_ID.fullmatch(source) and not Path(source).exists():
        return source
    return fallback


@functools.cache
def _operations_of(cls: type) -> dict[str, Operation]:
    """A method marked anywhere up the class's MRO stays an operation in a subclass that overrides it."""
    found = {}
    for name in dir(cls):
        for klass in cls.__mro__:
            spec = getattr(klass.__dict__.get(name), "__atelier_operation__", None)
            if spec is not None:
                found[name] = spec
                break
    return found


def _resolve_device(config: ModelConfig) -> tuple[torch.device, torch.dtype]:
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise ModelNotFound("device 'cuda' was asked for, but torch sees no GPU here; use device 'auto' or 'cpu'")
    device = torch.device("cuda" if (config.device == "cuda" or (config.device == "auto" and cuda)) else "cpu")
    if config.dtype == "auto":
        # bf16 halves memory and is the GPUs' fast path; on CPUs float32 is both faster and exact.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    return device, dtype


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "model_index.json"):
        hit = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(hit, str):
            return True
    return False


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_reachable(timeout: float = 3.0) -> bool:
    # huggingface_hub retries an unreachable hub for ~30 s; one short connect answers the same question.
    url = urlparse(_hub_endpoint())
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False
