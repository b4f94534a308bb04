"""Paint-and-keep: a prompt (enhanced by the Writer if asked) painted by the Painter, each image kept
in the caller's gallery with its prompts."""

from __future__ import annotations

import asyncio
import io

from models.configs import PainterConfig
from storage.errors import InvalidInput

from .context import Generated, Verbs
from .photos import Photos
from .texts import Texts


class Generation(Verbs):
    def __init__(self, ctx, texts: Texts, photos: Photos):
        super().__init__(ctx)
        self.texts, self.photos = texts, photos

    async def check(self, prompt: str, size: str | None, steps: int | None, seed: int | None, *,
                    field: str = "text") -> str:
        """Refuse a prompt the content policy refuses (`field` names it), bad sizes and steps, before the Writer
        or the Painter does any work; returns WxH.

        Checked here, in the ingress, against the limits the Painter's `info` tells (asked once per
        process): a caller's mistake costs no round trip, and no Painter replica logs it (issue 28).

        The first ask may wait for a Painter scaled to zero to start: under the route's deadline, as the
        painting itself is."""
        await self.ctx.guard.check(prompt, stage="prompt", field=field)
        info = await self.deadline(self.models.info("painter"), self.policy.timeouts.generate_s, "image generation")
        limits = info.get("limits")
        if limits is None:  # a Painter that does not tell its limits checks them itself
            return await self.deadline(self.models.call("painter", "size_of", prompt, size, steps, seed),
                                       self.policy.timeouts.generate_s, "image generation")
        w, h, _, _ = PainterConfig.model_validate(limits).check(prompt, size, steps, None, seed)
        return f"{w}x{h}"

    async def paint(self, user: str, prompt: str, *, size: str, steps: int | None, seed: int | None,
                    enhance: bool, keep: bool, n: int = 1, request_id: str = "-") -> list[Generated]:
        """Paint-and-keep: the prompt (enhanced by the Writer if asked), n images (image i with seed + i),
        each kept in the caller's gallery with its prompts when `keep`. Both HTTP surfaces use this.
        More images than the caller's plan paints at once is their mistake, refused before any work."""
        cap = await self.models.cap("painter")
        if cap is not None and n > cap:
            raise InvalidInput(f"n={n}: your plan paints at most {cap} image{'s' if cap != 1 else ''} at once; "
                               f"send n={cap} or fewer", field="n")

        if keep:  # room in the caller's gallery before any model runs
            await self.photos.room(user, n, 0)

        async def run():
            used, degraded = prompt, False
            if enhance:
                used, degraded = await self.texts.enhance(prompt, request_id, user=user, checked=True,
                                                          instead="painting the original text")
            seeds = [None if seed is None else (seed + i) % 2**63 for i in range(n)]
            painted = await all_or_none(self.models.call("painter", "generate", used, size=size, steps=steps, seed=s)
                                        for s in seeds)
            # Every picture checked before any is kept or sent: a blocked one refuses the request (400), and
            # nothing of it is stored.
            screened = await asyncio.gather(*(self.ctx.guard.check_image(_picture(p["png"]), stage="image",
                                                                          user=user) for p in painted))
            out = [Generated(painted=p, original=prompt, used=used, degraded=degraded or s.degraded,
                             safety=s.verdict) for p, s in zip(painted, screened)]
            if keep:
                for g in out:
                    g.row = await self.keep_generated(user, g)
            return out

        return await self.deadline(run(), self.policy.timeouts.generate_s, "image generation")

    async def keep_generated(self, user: str, g: Generated) -> dict:
        lib = await self.library()
        image = await lib.admit(g.painted["png"], content_type="image/png")
        p = g.painted
        row, _ = await self.photos.embed_and_store(user, image, source="generated", caption=g.original,
                                                   meta={"prompt_original": g.original, "prompt_used": g.used,
                                                         "seed": p["seed"], "size": p["size"],
                                                         "model": p["model_id"], "steps": p["steps"]},
                                                   safety=g.safety, checked=True)
        return row

    async def writer_random(self) -> bool:
        return bool((await self.models.info("writer"))["random_weights"])


def _picture(png: bytes):
    """A painted PNG as the image the Guard looks at."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB")


async def all_or_none(calls) -> list:
    """The calls' answers, run at once; when one fails (a refused image of `n`: the Painter's queue is full),
    the others are cancelled and the first failure is raised. Serve cancels a cancelled handle call on its
    replica, where the Painter stops at its next denoising step: nothing is painted for an answer already
    sent as an error (issue 29.6)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
