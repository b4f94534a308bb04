"""`POST /v1/moderations` in OpenAI's shape, answered by the Guard (issue 30.5).

`input` is a text, an array of texts (one result each), or an array of parts (`text` and `image_url`: a data
URI or an image URL this service issued to the caller), judged together as one result, as OpenAI's omni
moderation does. Each result has OpenAI's categories (booleans), `category_scores` and
`category_applied_input_types`, filled from the Guard's own categories (violent, illegal, sexual, pii,
self_harm, unethical, political, copyright, jailbreak), which are answered beside them under their own names.
`flagged` is what this service's content policy, under the caller's plan, blocks or flags.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from deployments.service import ProductService
from models.configs import GUARD_CATEGORIES
from storage.errors import InvalidInput, NotFound

from .deps import caller, service
from .edge import JsonRoute
from .openai import ImagePart, TextPart, _vision_image

router = APIRouter(route_class=JsonRoute)

# OpenAI's moderation categories, each answered from the Guard category that covers it.
OPENAI_CATEGORIES = {
    "harassment": "unethical", "harassment/threatening": "violent", "hate": "unethical",
    "hate/threatening": "violent", "illicit": "illegal", "illicit/violent": "violent", "self-harm": "self_harm",
    "self-harm/intent": "self_harm", "self-harm/instructions": "self_harm", "sexual": "sexual",
    "sexual/minors": "sexual", "violence": "violent", "violence/graphic": "violent",
}
# Names OpenAI clients send for a moderation model: answered by the Guard, whose name the answer carries.
_OPENAI_MODELS = ("omni-moderation", "text-moderation")
MAX_INPUTS = 32
MAX_IMAGES = 4

Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str | None = None
    input: str | list[str] | list[Part] = Field(..., description="A text, texts, or text and image parts.")


@router.post("/v1/moderations")
async def moderations(body: ModerationRequest, request: Request, user: str = Depends(caller),
                      svc: ProductService = Depends(service)):
    guard = svc.ctx.guard
    if "guard" not in svc.ctx.models.roles:
        raise NotFound("this service runs no Guard model, so it answers no moderations", code="model_not_found",
                       field="model")
    info = await svc.model_info("guard")
    if body.model is not None and body.model not in (info["name"], "guard") \
            and not body.model.startswith(_OPENAI_MODELS):
        raise NotFound(f"model {body.model!r} is not served here; use {info['name']!r} or leave model out",
                       code="model_not_found", field="model")
    items = [body.input] if isinstance(body.input, str) else body.input
    if not items:
        raise InvalidInput("input is empty; send a text, texts, or parts", field="input")
    if len(items) > MAX_INPUTS:
        raise InvalidInput(f"input has {len(items)} items; send at most {MAX_INPUTS}", field="input")
    # Checked here against the limit the Guard's info tells: a caller's mistake costs no round trip and no
    # replica logs it (issue 28).
    most = (info.get("limits") or {}).get("max_text_chars")
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else getattr(item, "text", None)
        if most is not None and text is not None and len(text) > most:
            raise InvalidInput(f"input[{i}] has {len(text)} characters; the limit is {most}",
                               code="invalid_guard_input", field="input")
    tolerance = await guard.tolerance(user)
    if all(isinstance(item, str) for item in items):
        results = [_result(guard, [("text", await guard.moderate("check_text", text))], tolerance) for text in items]
    else:
        if sum(isinstance(p, ImagePart) for p in items) > MAX_IMAGES:
            raise InvalidInput(f"send at most {MAX_IMAGES} images in one moderation", field="input")
        verdicts = []
        for i, part in enumerate(items):
            if isinstance(part, TextPart):
                verdicts.append(("text", await guard.moderate("check_text", part.text)))
            else:
                image = await _vision_image(request, user, svc, part.image_url.url, f"input[{i}].image_url")
                verdicts.append(("image", await guard.moderate("check_image", image)))
        results = [_result(guard, verdicts, tolerance)]
    return {"id": f"modr-{uuid.uuid4().hex}", "model": info["name"], "results": results,
            "random_weights": info["random_weights"]}


def _result(guard, verdicts: list[tuple[Literal["text", "image"], dict]], tolerance: float) -> dict:
    """One OpenAI result from the verdicts of one input's parts: each category's highest score, and the kinds
    of input that scored it."""
    scores = {c: max(v["scores"].get(c, 0.0) for _, v in verdicts) for c in GUARD_CATEGORIES}
    kinds = {c: sorted({kind for kind, v in verdicts if v["scores"].get(c, 0.0) > 0.0}) for c in GUARD_CATEGORIES}
    blocked, flagged = guard.policy.judge(scores, tolerance)
    hit = set(blocked) | set(flagged)
    names = {**OPENAI_CATEGORIES, **{c: c for c in GUARD_CATEGORIES}}
    return {"flagged": bool(hit), "categories": {name: c in hit for name, c in names.items()},
            "category_scores": {name: scores[c] for name, c in names.items()},
            "category_applied_input_types": {name: kinds[c] for name, c in names.items()}}
