"""The Serve application builder that serve_config.yaml points at (`deployments.app:build_app`)."""

# No `from __future__ import annotations` here: Serve validates `args` against the builder's
# annotation, which must be the AppArgs class itself, not a string.

from ray.serve import Application

from .config import AppArgs
from .describer import DescriberDeployment
from .embedder import EmbedderDeployment
from .ingress import Ingress
from .painter import PainterDeployment
from .writer import WriterDeployment


def build_app(args: AppArgs) -> Application:
    """One deployment per model, composed by the ingress; every option comes from the typed args."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    embedder = EmbedderDeployment.options(
        user_config=args.embedder.batching.model_dump(), **args.embedder.deployment.serve_options()
    ).bind(args.embedder.model.model_dump())
    writer = WriterDeployment.options(**args.writer.deployment.serve_options()).bind(args.writer.model.model_dump())
    describer = DescriberDeployment.options(**args.describer.deployment.serve_options()).bind(
        args.describer.model.model_dump()
    )
    painter = PainterDeployment.options(**args.painter.deployment.serve_options()).bind(args.painter.model.model_dump())
    return Ingress.options(**args.ingress.deployment.serve_options()).bind(
        embedder, writer, describer, painter, args.ingress.model_dump(), args.storage
    )
