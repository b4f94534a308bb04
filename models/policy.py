"""The content policy's live settings (issue 30): the operator's term list and what the Guard's scores lead to.

One policy for texts and images: per category of the Guard (models.configs.GUARD_CATEGORIES) an action --
`block` (refused: 400 `content_policy`; a generated image is never stored or returned), `flag` (let through,
its verdict kept on the row and shown) or `allow` (not looked at) -- and the score from which it applies. A
plan's `safety_tolerance` (deployments.config.Plan) raises every threshold toward 1, as BFL's
`safety_tolerance` loosens its filter per request. A user's own upload is never refused by a score: its
verdict is stored and it is flagged, so the owner keeps their photo and search can leave it out.

Torch-free: the ingress and the config check import it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.configs import GUARD_CATEGORIES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rule(_Strict):
    """What a category's score leads to."""

    action: Literal["block", "flag", "allow"] = Field(
        "block", description="block: refused (a generated image is dropped); flag: let through and marked; "
        "allow: not looked at.")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="The score (0..1) from which the action applies.")


class Safety(_Strict):
    """Content safety's live settings: the term list, the Guard model's policy, and what happens without it."""

    terms_file: str | None = Field(
        None, description="The operator's term list (UTF-8; one term per line under `[category]` lines): a prompt "
        "with a listed term is refused (400 content_policy) before any model runs. Matched case-folded and "
        "NFKC-normalised (full-width = half-width). Read again when the file changes. Empty: no list.")
    reload_s: float = Field(2.0, ge=0, description="How often, at most, the term list file is checked for changes.")
    guard: bool = Field(
        True, description="Ask the Guard model about prompts, model-written texts, generated images and uploads "
        "(when the app has a Guard). false: the term list alone.")
    categories: dict[str, Rule] = Field(
        default_factory=dict, description="Per Guard category (violent, illegal, sexual, pii, self_harm, unethical, "
        "political, copyright, jailbreak): its action and threshold. A category left out takes `default`.")
    default: Rule = Field(default_factory=Rule, description="The rule of every category not named in `categories`.")
    on_guard_down: Literal["closed", "open"] = Field(
        "closed", description="When the Guard cannot answer (down, overloaded, past its deadline): `closed` answers "
        "the guarded routes 503 guard_unavailable with Retry-After; `open` lets them through unchecked by the model "
        "(the term list still applies) and says so (`degraded: true`, header X-Atelier-Safety: degraded).")
    guard_timeout_s: float = Field(10.0, gt=0, description="How long one Guard check may take before the Guard "
                                                           "counts as down for that request.")
    stream_every_chars: int = Field(
        400, ge=1, description="A streamed answer is checked by the Guard each time it has grown by this many "
        "characters, and once more when it ends (the term list checks every piece).")

    @field_validator("categories")
    @classmethod
    def _known(cls, categories: dict[str, Rule]) -> dict[str, Rule]:
        unknown = sorted(set(categories) - set(GUARD_CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; the Guard's "
                             f"are {', '.join(GUARD_CATEGORIES)}")
        return categories

    def rule(self, category: str) -> Rule:
        return self.categories.get(category, self.default)

    def record(self, verdict: dict, tolerance: float = 0.0) -> tuple[list[str], dict]:
        """(the categories this policy blocks, the Guard's verdict as a gallery row keeps it: its model, label and
        scores, and `flagged`, every category the policy blocks or flags)."""
        blocked, flagged = self.judge(verdict["scores"], tolerance)
        return blocked, {"model": verdict["model"], "label": verdict["label"], "scores": verdict["scores"],
                         "flagged": sorted(blocked + flagged)}

    def judge(self, scores: dict[str, float], tolerance: float = 0.0) -> tuple[list[str], list[str]]:
        """(blocked, flagged) categories of a verdict's scores under this policy and a plan's tolerance (0: as
        configured; 1: nothing applies). A threshold t becomes t + (1 - t) * tolerance."""
        blocked, flagged = [], []
        for category, score in sorted(scores.items()):
            rule = self.rule(category)
            if rule.action == "allow" or tolerance >= 1.0:
                continue
            if score >= rule.threshold + (1.0 - rule.threshold) * tolerance:
                (blocked if rule.action == "block" else flagged).append(category)
        return blocked, flagged
