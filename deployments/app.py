"""The Serve application builder that serve configs point at (`deployments.app:build_app`)."""

# No `from __future__ import annotations` here: Serve validates `args` against the builder's
# annotation, which must be the AppArgs class itself, not a string.

from ray.serve import Application

from .config import AppArgs, BatchOptions, IngressTuning
from .serving.ingress import Ingress
from .serving.roles import (DescriberDeployment, EmbedderDeployment, GuardDeployment, PainterDeployment,
                            WriterDeployment)


def build_app(args: AppArgs) -> Application:
    """One deployment per model, composed by the ingress; every option comes from the typed args."""
    return compose(args)


def compose(args: AppArgs, model_classes: dict[str, type] | None = None, tuning: dict | None = None) -> Application:
    """build_app with the model classes open (fault tests bind a stand-in that fails on purpose) and the
    ingress's live settings to start with (`tuning`, an IngressTuning's fields; a serve config's
    `deployments:` section sets them in a deployment)."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    classes = model_classes or {}

    def bind(deployment, spec, role, **extra):
        bound_args = (spec.model.model_dump(),) + ((classes[role],) if role in classes else ())
        return deployment.options(**spec.deployment.serve_options(), **extra).bind(*bound_args)

    # Live settings start at their defaults; the serve config's `deployments:` section overrides them.
    embedder = bind(EmbedderDeployment, args.embedder, "embedder", user_config=BatchOptions().model_dump())
    writer = bind(WriterDeployment, args.writer, "writer")
    describer = bind(DescriberDeployment, args.describer, "describer")
    painter = bind(PainterDeployment, args.painter, "painter")
    guard = None if args.guard is None else bind(GuardDeployment, args.guard, "guard")
    return Ingress.options(**args.ingress.deployment.serve_options(),
                           user_config=IngressTuning.model_validate(tuning or {}).model_dump()).bind(
        embedder, writer, describer, painter, args.ingress_args(), scale_to_zero(args), capacity(args), guard=guard
    )


def capacity(args: AppArgs) -> dict[str, int]:
    """Calls each model role takes at once before Serve answers back-pressure (roles with a bounded queue):
    where the plans' fair share starts refusing the user holding most of a role."""
    roles = {"embedder": args.embedder, "writer": args.writer, "describer": args.describer, "painter": args.painter}
    return {role: most for role, spec in roles.items() if (most := spec.deployment.most_at_once()) is not None}


def scale_to_zero(args: AppArgs) -> tuple[str, ...]:
    """The roles whose autoscaling may leave them no replica when idle (`min_replicas: 0`)."""
    roles = {"embedder": args.embedder, "writer": args.writer, "describer": args.describer, "painter": args.painter,
             **({"guard": args.guard} if args.guard is not None else {})}
    return tuple(role for role, spec in roles.items()
                 if spec.deployment.num_replicas is None and spec.deployment.autoscaling is not None
                 and spec.deployment.autoscaling.min_replicas == 0)
