"""`python -m models.kit build --size tiny DIR`: write stand-in checkpoints for the chosen roles."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .builders import STAND_INS, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.kit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build random-weight stand-in checkpoints")
    b.add_argument("dir", type=Path, help="output folder; each role goes to DIR/<role>")
    b.add_argument("--size", choices=["tiny", "full"], default="tiny")
    b.add_argument("--roles", default=",".join(STAND_INS),
                   help=f"comma-separated subset of {','.join(STAND_INS)} (embedder: SigLIP 2; the other families "
                        "are embedder_chinese_clip and embedder_clip; guard_image is the Guard's image classifier)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights' dtype on disk (default: float32 for tiny, bfloat16 for full)")
    args = parser.parse_args(argv)

    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = sorted(set(roles) - set(STAND_INS))
    if unknown:
        parser.error(f"unknown role(s) {', '.join(unknown)}; choose from {', '.join(STAND_INS)}")
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    dtype = getattr(torch, args.dtype) if args.dtype else None
    summary = {}
    for role in roles:
        t0 = time.perf_counter()
        built = build(role, args.size, args.dir, seed=args.seed, dtype=dtype)
        summary[role] = {"path": str(built.path), "parameters": built.parameters,
                         "seconds": round(time.perf_counter() - t0, 2)}
        print(f"built {role:<21} {built.parameters / 1e6:10.2f}M parameters in {summary[role]['seconds']}s "
              f"-> {built.path}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
