#!/usr/bin/env python3
"""Issue 10: the GPU proof. Speed and peak memory of the four roles' full-size stand-ins on one
NVIDIA GPU, and whether each role's GPU share in serve_config.yaml holds its peak.

Self-contained: it needs torch and transformers (and diffusers for the painter), never Ray,
LanceDB, pydantic or this project's packages, and reads nothing from disk or the hub but
benchmarks/checks.py beside it (the benchmarks' shared answer checks, standard library only). Models
are built with random weights straight on the device, from the production shapes copied below out of
models/kit/builders.py (`full`), or the tiny kit's shapes (`tiny`, for the CPU test).

Answers are checked before a rate is kept: every tower's output has the shape asked for (one vector
of the family's width per image or text) and only finite values, every generation makes exactly the
tokens asked for, every painting is a finite image of the size asked for, fp8 Linears stay within 10%
of bf16. A wrong step is recorded under "wrong" in its section's JSON, summary.md (the tables
RESULTS.md takes) is not written, and the run exits 3.

    python benchmarks/gpu_proof.py --out DIR                       # all sections on cuda, full size
    python benchmarks/gpu_proof.py --out DIR --only painter        # one section (or a comma list)
    python benchmarks/gpu_proof.py --out DIR --device cpu --kit tiny   # what tests/benchmarks runs
    python benchmarks/gpu_proof.py --out DIR --only summary --results RUN_DIR   # re-tabulate a run

The embedder section measures CLIP ViT-B/32 (issue 10's goal is its image rate), then the bilingual
families the Embedder also serves (issue 15): SigLIP 2 base/16-224, the production default, whose
eager peak is the role's memory, and Chinese-CLIP base/16.

Sections, in run order: embedder, describer, writer, painter, guard, summary. Each writes DIR/SECTION.json
after every step and when it ends (a section that fails records its traceback there and the next one
runs), so a run cut short still returns what it measured and `--only` reruns what is missing. A
section starts no new step once --budget-s (default 450 s from the start) is spent. summary reads
the section files and writes summary.json and summary.md (the tables RESULTS.md takes). The run
writes at most these 7 files into DIR, so DIR plus a log fits the device tool's 8 files.

The guard section (issue 30) times the Guard's Qwen3Guard-Gen-0.6B text check (one prefill plus a short
cached continuation per batch) and its ViT-base/16 image classifier, at serve_config.yaml's tenth of a GPU.

On a lent GPU (the device tool; diffusers is carried as a wheel, the host has no network):

    # here, once, in the repo root (diffusers is pure Python, so one wheel serves Python 3.12):
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl diffusers==0.42.1
    # run, carry [".whl"], timeout_s 540:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; nvidia-smi; set -o pipefail;
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_proof.py --out $OUT 2>&1 | tee $OUT/log.txt

diffusers 0.42.1 needs nothing the host lacks on Python 3.12 (it imports importlib_metadata only
below 3.8; huggingface-hub >= 1.32, safetensors >= 0.8, numpy, regex, requests, Pillow and filelock
are there). Measurements: CUDA events around the timed region after warm-up calls, the median (p50)
of the timed runs, `torch.cuda.max_memory_reserved/allocated` with the peak reset before each step.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

SECTIONS = ("embedder", "describer", "writer", "painter", "guard", "summary")
OPT_IN: tuple[str, ...] = ()  # sections run only when --only names them (none today)
ROLES = ("embedder", "writer", "describer", "painter", "guard")
# serve_config.yaml's num_gpus per role (read from the file when it and PyYAML are there).
DEFAULT_SHARES = {"embedder": 0.1, "writer": 0.25, "describer": 0.25, "painter": 1.0, "guard": 0.1}
# Card memory as nvidia-smi reports it: H100 SXM5 80 GB, and the H200 seen in the device KINDS.md.
CARDS_MIB = {"H100 80 GB": 81559, "H200 141 GB": 143771}
GOALS = {"painter_p50_s": 0.7, "embedder_img_s": 3000.0, "writer_tok_s_b1": 150.0}
FP8_MAX = 448.0  # largest float8_e4m3fn
GIB = 2**30
REPO = Path(__file__).resolve().parents[1]


def _sibling(name: str):
    """benchmarks/NAME.py loaded from beside this file (not as the `benchmarks` package, which the GPU
    host's copy of the tree cannot import without the project's dependencies)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"gpu_proof_{name}", Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _sibling("checks")
check, BenchmarkWrong = checks.check, checks.BenchmarkWrong


def check_output(what: str, out: torch.Tensor, shape: tuple) -> None:
    """A model's answer has the shape asked for and only finite values (checked outside any timing)."""
    check(tuple(out.shape) == tuple(shape), f"{what}: output of shape {tuple(out.shape)}, expected {tuple(shape)}")
    check(bool(torch.isfinite(out).all()), f"{what}: non-finite values in the output")

# Per kit: batch sizes, lengths and run counts. `full` is what the issue asks for; `tiny` keeps every
# code path at a size whose whole run takes seconds on 2 CPU cores.
PLAN = {
    "full": dict(embed_batches=(64, 256), embed_iters=20, embed_reps=5, text_batch=256, text_len=77,
                 writer_prompt=128, writer_new=256, writer_batches=(1, 16), writer_runs=3,
                 desc_text=32, desc_new=128, desc_runs=3, guard_prompt=512, guard_batch=16, guard_runs=10,
                 paint_size=1024, paint_steps=4, paint_runs=5, t5_len=256, clip_len=77),
    "tiny": dict(embed_batches=(64, 256), embed_iters=2, embed_reps=2, text_batch=64, text_len=77,
                 writer_prompt=16, writer_new=16, writer_batches=(1, 16), writer_runs=1,
                 desc_text=8, desc_new=8, desc_runs=1, guard_prompt=64, guard_batch=16, guard_runs=2,
                 paint_size=64, paint_steps=4, paint_runs=2, t5_len=256, clip_len=77),
}


# -- the stand-ins' shapes (copied from models/kit/builders.py, which writes them to disk) --------
def clip_config(kit: str):
    from transformers import CLIPConfig

    if kit == "full":  # openai/clip-vit-base-patch32: CLIPConfig's defaults are ViT-B/32
        return CLIPConfig(projection_dim=512)
    return CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=64,
    )


def chinese_clip_config(kit: str):
    """OFA-Sys/chinese-clip-vit-base-patch16 at `full`: RoBERTa-wwm-ext-base-chinese + ViT-B/16, 512-d."""
    from transformers import ChineseCLIPConfig

    if kit == "full":
        tower = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        text = dict(vocab_size=21128, max_position_embeddings=512, **tower)
        vision, projection = dict(image_size=224, patch_size=16, **tower), 512
    else:
        tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        text = dict(vocab_size=8000, max_position_embeddings=64, **tower)
        vision, projection = dict(image_size=32, patch_size=8, **tower), 32
    return ChineseCLIPConfig(text_config=dict(type_vocab_size=2, pad_token_id=0, **text), vision_config=vision,
                             projection_dim=projection)


CHINESE_CLIP_CONTEXT = 52  # Chinese-CLIP's text context (its tokenizer's model_max_length)
SIGLIP_CONTEXT = 64  # SigLIP's text tower reads exactly 64 tokens, padded on the right


def siglip2_config(kit: str):
    """google/siglip2-base-patch16-224 at `full` (a `siglip` model): Gemma's 256k vocabulary, 12-layer
    text and ViT-B/16 vision towers, 768-d vectors."""
    from transformers import SiglipConfig

    if kit == "full":
        tower = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vocab_size, vision = 256000, dict(image_size=224, patch_size=16)
    else:
        tower = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2)
        vocab_size, vision = 8000, dict(image_size=32, patch_size=8)
    return SiglipConfig(
        text_config=dict(vocab_size=vocab_size, max_position_embeddings=SIGLIP_CONTEXT,
                         projection_size=tower["hidden_size"], pad_token_id=0, eos_token_id=1, bos_token_id=2, **tower),
        vision_config=dict(**vision, **tower),
    )


TINY_VOCAB = 6016  # the tiny kit's trained BPE (6000) plus its special tokens, rounded up


def qwen2_text(kit: str, *, vlm: bool) -> dict:
    if kit == "full" and not vlm:  # Qwen/Qwen2.5-1.5B-Instruct
        return dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    if kit == "full":  # the language half of OpenGVLab/InternVL3-1B-hf (Qwen2.5-0.5B, lm_head untied)
        return dict(vocab_size=151674, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    return dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rms_norm_eps=1e-6, tie_word_embeddings=True)


def internvl_config(kit: str):
    from transformers import InternVLConfig

    text = qwen2_text(kit, vlm=True)
    if kit == "full":  # InternViT-300M-448px-V2.5, the vision half of InternVL3-1B
        image, patch = 448, 14
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=[image, image], patch_size=[patch, patch], use_qk_norm=False,
                      layer_scale_init_value=0.1, use_mean_pooling=True)
        image_token = 151667  # <IMG_CONTEXT> in InternVL3-1B-hf
    else:
        image, patch = 56, 14
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=[image, image], patch_size=[patch, patch])
        image_token = TINY_VOCAB - 6
    downsample = 0.5
    config = InternVLConfig(
        vision_config=vision, text_config=dict(model_type="qwen2", **text), image_token_id=image_token,
        downsample_ratio=downsample, tie_word_embeddings=text["tie_word_embeddings"],
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    image_tokens = int((image // patch) ** 2 * downsample**2)
    return config, image, image_tokens


def flux_configs(kit: str) -> dict:
    from transformers import CLIPTextConfig, T5Config

    if kit == "full":  # black-forest-labs/FLUX.1-schnell
        clip = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)
        t5 = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        transformer: dict = {}  # FluxTransformer2DModel's defaults are FLUX.1's shapes
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                   norm_num_groups=32, sample_size=1024)
    else:
        clip = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              projection_dim=32, max_position_embeddings=77, vocab_size=49408)
        t5 = T5Config(vocab_size=4000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        transformer = dict(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                           axes_dims_rope=(4, 6, 6))
        vae = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=16,
                   norm_num_groups=8, sample_size=64)
    clip.bos_token_id, clip.eos_token_id, clip.pad_token_id = 49406, 49407, 49407
    return dict(clip=clip, t5=t5, transformer=transformer, vae=vae)


# -- measuring ------------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.kit = args.kit
        self.plan = dict(PLAN[args.kit])
        self.dtype = torch.bfloat16 if args.kit == "full" else torch.float32
        self.backend = args.compile_backend or ("inductor" if self.cuda else "eager")
        self.mode = args.compile_mode
        self.out = args.out
        self.budget_s = args.budget_s
        self.t0 = time.perf_counter()
        self.env: dict = {}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds one call of fn takes on the device (CUDA events; the host clock on the CPU)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    @contextlib.contextmanager
    def build(self, seed: int = 0):
        """Modules constructed inside are random-initialised on the device, in the kit's dtype."""
        old = torch.get_default_dtype()
        torch.manual_seed(seed)
        torch.set_default_dtype(self.dtype)
        try:
            with self.device:
                yield
        finally:
            torch.set_default_dtype(old)

    def compile_kw(self, mode: str | None) -> dict:
        kw: dict = {"backend": self.backend, "dynamic": False}
        if self.backend == "inductor":
            mode = self.mode if self.mode != "auto" else mode
            if mode:
                kw["mode"] = mode
        return kw

    def mem_reset(self, empty: bool = False) -> None:
        if empty:
            gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            if empty:
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def mem_peak(self) -> dict:
        if not self.cuda:
            return {}
        return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(self.device) / GIB, 3),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved(self.device) / GIB, 3)}


def p50(xs: list[float]) -> float:
    return float(statistics.median(xs))


def rnd(x: float, n: int = 4) -> float:
    return float(f"{x:.{n}g}")


def weights_gib(*modules) -> float:
    total = 0
    for m in modules:
        total += sum(t.numel() * t.element_size() for t in m.parameters())
        total += sum(t.numel() * t.element_size() for t in m.buffers())
    return round(total / GIB, 4)


def n_params(*modules) -> int:
    return int(sum(p.numel() for m in modules for p in m.parameters()))


def dynamo_reset() -> None:
    torch._dynamo.reset()
    cfg = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))


class Section:
    """One section's record: written to DIR/NAME.json after every step and at the end."""

    def __init__(self, ctx: Ctx, name: str):
        self.ctx, self.name = ctx, name
        self.path = ctx.out / f"{name}.json"
        self.rec: dict = {"section": name, "status": "running", "error": None, "kit": ctx.kit,
                          "device": str(ctx.device), "dtype": str(ctx.dtype).replace("torch.", ""),
                          "compile_backend": ctx.backend, "plan": ctx.plan, "env": ctx.env,
                          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "steps": {}, "memory": {}}

    def save(self) -> None:
        write_json(self.path, self.rec)

    def step(self, name: str, fn: Callable[[], dict], *, needs_budget: bool = True) -> dict | None:
        ctx = self.ctx
        if needs_budget and ctx.left() <= 0:
            self.rec["steps"][name] = {"skipped": f"time budget ({ctx.budget_s:.0f} s) spent"}
            log(f"{self.name}/{name}: skipped, time budget spent")
            self.save()
            return None
        ctx.mem_reset()
        t = time.perf_counter()
        try:
            res = fn() or {}
        except BenchmarkWrong as exc:  # recorded as wrong: the run exits 3 and writes no summary.md
            res = {"error": f"BenchmarkWrong: {exc}", "wrong": str(exc)}
            log(f"{self.name}/{name}: WRONG ANSWER {str(exc)[:300]}")
        except Exception as exc:  # a failed step is recorded and the section goes on
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            log(f"{self.name}/{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
        res.update(ctx.mem_peak())
        res["wall_s"] = round(time.perf_counter() - t, 2)
        self.rec["steps"][name] = res
        if "error" not in res and "skipped" not in res:
            log(f"{self.name}/{name}: " + ", ".join(f"{k}={v}" for k, v in res.items()
                                                      if not isinstance(v, (dict, list))))
        self.save()
        return None if "error" in res or "skipped" in res else res


def log(msg: str) -> None:
    print(f"[gpu_proof {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


# -- environment ----------------------------------------------------------------------------------------
def environment(ctx: Ctx, argv: list[str]) -> dict:
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except Exception:
            return None

    env: dict = {"python": platform.python_version(), "torch": torch.__version__,
                 "torch_cuda": torch.version.cuda, "transformers": version("transformers"),
                 "diffusers": version("diffusers"), "platform": platform.platform(),
                 "command": "python3 benchmarks/gpu_proof.py " + " ".join(argv)}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 2),
                   capability=".".join(map(str, torch.cuda.get_device_capability(ctx.device))),
                   multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
        try:
            line = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                   "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
            name, driver, total = [s.strip() for s in line.splitlines()[0].split(",")]
            env.update(driver=driver, nvidia_smi_name=name, nvidia_smi_memory=total)
        except Exception as exc:
            env["driver"] = f"unknown ({type(exc).__name__})"
    else:
        env.update(gpu=None, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


def cuda_overhead_gib(ctx: Ctx) -> float | None:
    """Device memory this process holds outside PyTorch's allocator (CUDA context, loaded kernels)."""
    if not ctx.cuda:
        return None
    free, total = torch.cuda.mem_get_info(ctx.device)
    return round((total - free - torch.cuda.memory_reserved(ctx.device)) / GIB, 3)


# -- embedder: CLIP ViT-B/32, then SigLIP 2 and Chinese-CLIP ------------------------------------------------------------------------------
def run_embedder(ctx: Ctx, sec: Section) -> None:
    from transformers import CLIPModel

    plan = ctx.plan
    config = clip_config(ctx.kit)
    with ctx.build():
        model = CLIPModel(config).eval()
    sec.rec["parameters"] = n_params(model)
    sec.rec["memory"]["weights_gib"] = weights_gib(model)
    size = int(config.vision_config.image_size)

    class ImageTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m.visual_projection(self.m.vision_model(pixel_values=pixel_values).pooler_output)

    class TextTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            out = self.m.text_model(input_ids=input_ids, attention_mask=attention_mask)
            return self.m.text_projection(out.pooler_output)

    image, text = ImageTower(model), TextTower(model)

    def rate(fn, items: int) -> dict:
        runs = [items * plan["embed_iters"] / ctx.time(lambda: [fn() for _ in range(plan["embed_iters"])])
                for _ in range(plan["embed_reps"])]
        return {"per_s": rnd(p50(runs)), "runs_per_s": [rnd(r) for r in runs],
                "ms_per_batch": rnd(1000 * items / p50(runs))}

    def image_step(tower, batch: int, warmup: int) -> Callable[[], dict]:
        return _image_step(ctx, rate, "CLIP", tower, size, config.projection_dim, batch, warmup)

    with torch.inference_mode():
        for b in plan["embed_batches"]:
            sec.step(f"image_b{b}_eager", image_step(image, b, warmup=3))
        dynamo_reset()
        compiled = torch.compile(image, **ctx.compile_kw("reduce-overhead"))
        for b in plan["embed_batches"]:
            # the first call compiles (its time is first_call_s); reduce-overhead records CUDA graphs later
            sec.step(f"image_b{b}_compiled", image_step(compiled, b, warmup=4))

        def text_step() -> dict:
            n, length = plan["text_batch"], plan["text_len"]
            ids = torch.randint(0, config.text_config.vocab_size - 2, (n, length), device=ctx.device)
            ids[:, -1] = config.text_config.eos_token_id
            mask = torch.ones_like(ids)
            for _ in range(3):
                text(ids, mask)
            res = rate(lambda: text(ids, mask), n)
            check_output(f"CLIP text tower, batch {n}", text(ids, mask), (n, config.projection_dim))
            return {"batch": n, "tokens": length, "texts_per_s": res["per_s"], "runs_texts_per_s": res["runs_per_s"],
                    "ms_per_batch": res["ms_per_batch"]}

        sec.step(f"text_b{plan['text_batch']}_eager", text_step)
    steps = sec.rec["steps"]
    prod = [s.get("peak_reserved_gib") for k, s in steps.items() if k.endswith("_eager") and "peak_reserved_gib" in s]
    sec.rec["memory"]["production_peak_reserved_gib"] = max(prod) if prod else None
    sec.rec["memory"]["production_note"] = "max over the eager steps (a call holds at most 256 images)"
    sec.rec["families"] = {"clip": {"parameters": sec.rec["parameters"], "weights_gib": sec.rec["memory"]["weights_gib"]}}
    del model, image, text, compiled
    dynamo_reset()
    ctx.mem_reset(empty=True)
    for family in ("siglip2", "chinese_clip"):
        _bilingual(ctx, sec, family, rate)
    bi = [s.get("peak_reserved_gib") for k, s in steps.items() if k.startswith("siglip2_") and "peak_reserved_gib" in s]
    # SigLIP 2 is the production embedder (serve_config.yaml): its eager peak is the one the share must hold.
    if bi:
        sec.rec["memory"]["production_peak_reserved_gib"] = max(bi)
        sec.rec["memory"]["production_note"] = "max over SigLIP 2's eager steps (the default embedder; a call holds at most 256 images)"
    if "siglip2" in sec.rec["families"]:  # the role's figures are the default family's; CLIP's stay in families
        sec.rec["parameters"] = sec.rec["families"]["siglip2"]["parameters"]
        sec.rec["memory"]["weights_gib"] = sec.rec["families"]["siglip2"]["weights_gib"]
    sec.rec["headline"] = {k: s.get("img_per_s", s.get("texts_per_s")) for k, s in steps.items()}


def _image_step(ctx: Ctx, rate: Callable[[Callable[[], Any], int], dict], family: str, tower, size: int, dim: int,
                batch: int, warmup: int, **extra) -> Callable[[], dict]:
    """One image tower's step, for every family: the first call timed alone (a compiled tower compiles in it),
    `warmup` calls, the rate, then the output's shape checked before the rate is kept."""
    def go() -> dict:
        px = torch.randn(batch, 3, size, size, device=ctx.device, dtype=ctx.dtype)
        first = ctx.time(lambda: tower(px))
        for _ in range(warmup - 1):
            tower(px)
        res = rate(lambda: tower(px), batch)
        check_output(f"{family} image tower, batch {batch}", tower(px), (batch, dim))
        return {"batch": batch, **extra, "img_per_s": res["per_s"], "runs_img_per_s": res["runs_per_s"],
                "ms_per_batch": res["ms_per_batch"], "first_call_s": rnd(first)}
    return go


def _bilingual(ctx: Ctx, sec: Section, family: str, rate: Callable[[Callable[[], Any], int], dict]) -> None:
    """The bilingual families the Embedder serves beside CLIP: image tower at the largest batch (eager and,
    for SigLIP 2, compiled) and the text tower at its own context (SigLIP pads every text to 64 tokens)."""
    from transformers import ChineseCLIPModel, SiglipModel

    plan = ctx.plan
    config = siglip2_config(ctx.kit) if family == "siglip2" else chinese_clip_config(ctx.kit)
    with ctx.build():
        model = (SiglipModel if family == "siglip2" else ChineseCLIPModel)(config).eval()
    sec.rec["families"][family] = {"parameters": n_params(model), "weights_gib": weights_gib(model)}
    size = int(config.vision_config.image_size)
    length = SIGLIP_CONTEXT if family == "siglip2" else CHINESE_CLIP_CONTEXT
    # one width for both towers (else image and text vectors could not be compared): SigLIP's pooled
    # width, Chinese-CLIP's projection
    dim = config.vision_config.hidden_size if family == "siglip2" else config.projection_dim

    def features(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an output object

    class ImageTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return features(self.m.get_image_features(pixel_values=pixel_values))

    def image_step(tower, batch: int, warmup: int) -> Callable[[], dict]:
        return _image_step(ctx, rate, family, tower, size, dim, batch, warmup, image=size)

    def text_step() -> dict:
        n = plan["text_batch"]
        ids = torch.randint(3, config.text_config.vocab_size - 1, (n, length), device=ctx.device)
        if family == "siglip2":  # input_ids only: <eos> after the text, <pad> to 64 (the last token pools)
            ids[:, length // 2] = 1
            ids[:, length // 2 + 1:] = 0
            kw = {"input_ids": ids}
        else:
            kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for _ in range(3):
            model.get_text_features(**kw)
        res = rate(lambda: features(model.get_text_features(**kw)), n)
        check_output(f"{family} text tower, batch {n}", features(model.get_text_features(**kw)), (n, dim))
        return {"batch": n, "tokens": length, "texts_per_s": res["per_s"], "runs_texts_per_s": res["runs_per_s"],
                "ms_per_batch": res["ms_per_batch"]}

    big = max(plan["embed_batches"])
    image = ImageTower(model)
    with torch.inference_mode():
        sec.step(f"{family}_image_b{big}_eager", image_step(image, big, warmup=3))
        if family == "siglip2":
            dynamo_reset()
            compiled = torch.compile(image, **ctx.compile_kw("reduce-overhead"))
            sec.step(f"{family}_image_b{big}_compiled", image_step(compiled, big, warmup=4))
            del compiled
        sec.step(f"{family}_text_b{plan['text_batch']}_eager", text_step)
    del model, image
    dynamo_reset()
    ctx.mem_reset(empty=True)


# -- writer: Qwen2.5-1.5B shape, greedy ---------------------------------------------------------------------
def _compile_config(ctx: Ctx):
    """generate()'s own compile of the decoding step (a static cache): transformers' CompileConfig."""
    try:
        from transformers import CompileConfig
    except ImportError:
        from transformers.generation.configuration_utils import CompileConfig
    kw = dict(fullgraph=False, dynamic=False, backend=ctx.backend)
    if ctx.backend == "inductor":
        kw["mode"] = ctx.mode if ctx.mode != "auto" else "reduce-overhead"
    else:
        kw["mode"] = None
    cc = CompileConfig(**kw)
    cc._compile_all_devices = True  # transformers compiles on cuda only unless told (the CPU test)
    return cc


def _generate_step(ctx: Ctx, model, *, batch: int, prompt: int, new: int, runs: int, static: bool,
                   extra: dict | None = None, vocab: int) -> Callable[[], dict]:
    def go() -> dict:
        g = torch.Generator(device="cpu").manual_seed(batch)
        ids = torch.randint(100, vocab - 100, (batch, prompt), generator=g).to(ctx.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **(extra or {})}
        kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
        if static:
            kw.update(cache_implementation="static", compile_config=_compile_config(ctx))
        else:
            kw.update(disable_compile=True)
        counted: list[int] = []

        def once():
            out = model.generate(**inputs, **kw)
            counted.append(int(out.shape[1] - ids.shape[1]))

        first = ctx.time(once)  # warm-up (compiles the decoding step when static)
        times = [ctx.time(once) for _ in range(runs)]
        check(counted == [new] * len(counted), f"generate, batch {batch}: {counted} new tokens per run, asked {new}")
        got = counted[-1]
        return {"batch": batch, "prompt_tokens": prompt, "new_tokens": got,
                "tok_per_s": rnd(batch * got / p50(times)), "seq_tok_per_s": rnd(got / p50(times)),
                "ms_per_token": rnd(1000 * p50(times) / got), "p50_s": rnd(p50(times)),
                "runs_s": [rnd(t) for t in times], "first_call_s": rnd(first),
                "cache": "static" if static else "dynamic",
                "compiled": bool(static and hasattr(model, "_compiled_call"))}
    return go


def _greedy_model(ctx: Ctx, sec: Section, cls, config):
    """A generator built on the device that never stops early (no EOS): every run makes its full length."""
    with ctx.build():
        model = cls(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    sec.rec["parameters"] = n_params(model)
    sec.rec["memory"]["weights_gib"] = weights_gib(model)
    return model


def run_writer(ctx: Ctx, sec: Section) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    plan = ctx.plan
    text = qwen2_text(ctx.kit, vlm=False)
    config = Qwen2Config(**text, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = _greedy_model(ctx, sec, Qwen2ForCausalLM, config)
    common = dict(prompt=plan["writer_prompt"], new=plan["writer_new"], vocab=text["vocab_size"])
    with torch.inference_mode():
        # production: one request at a time, dynamic cache, no compile (models/writer.py)
        sec.step("b1_eager_dynamic", _generate_step(ctx, model, batch=1, runs=1, static=False, **common))
        dynamo_reset()
        for b in plan["writer_batches"]:
            sec.step(f"b{b}_static_compiled",
                     _generate_step(ctx, model, batch=b, runs=plan["writer_runs"], static=True, **common))
    steps = sec.rec["steps"]
    sec.rec["memory"]["production_peak_reserved_gib"] = steps.get("b1_eager_dynamic", {}).get("peak_reserved_gib")
    sec.rec["memory"]["production_note"] = "batch 1, dynamic cache, eager: how the Writer role generates"
    sec.rec["headline"] = {k: s.get("tok_per_s") for k, s in steps.items()}


# -- describer: InternVL3-1B shape, one 448x448 image -------------------------------------------------------
def run_describer(ctx: Ctx, sec: Section) -> None:
    from transformers import InternVLForConditionalGeneration

    plan = ctx.plan
    config, image, image_tokens = internvl_config(ctx.kit)
    model = _greedy_model(ctx, sec, InternVLForConditionalGeneration, config)
    vocab = config.text_config.vocab_size

    def step(new: int, runs: int) -> Callable[[], dict]:
        def go() -> dict:
            g = torch.Generator(device="cpu").manual_seed(0)
            half = plan["desc_text"] // 2
            head = torch.randint(100, vocab - 100, (1, half), generator=g)
            tail = torch.randint(100, vocab - 100, (1, plan["desc_text"] - half), generator=g)
            ids = torch.cat([head, torch.full((1, image_tokens), config.image_token_id), tail], 1).to(ctx.device)
            pixels = torch.randn(1, 3, image, image, generator=g).to(ctx.device, ctx.dtype)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
            kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None, disable_compile=True)
            counted: list[int] = []

            def once():
                out = model.generate(**inputs, **kw)
                counted.append(int(out.shape[1] - ids.shape[1]))

            first = ctx.time(once)
            times = [ctx.time(once) for _ in range(runs)]
            check(counted == [new] * len(counted), f"describe: {counted} new tokens per run, asked {new}")
            got = counted[-1]
            return {"image": f"{image}x{image}", "image_tokens": image_tokens, "prompt_tokens": int(ids.shape[1]),
                    "new_tokens": got, "p50_s": rnd(p50(times)), "runs_s": [rnd(t) for t in times],
                    "tok_per_s": rnd(got / p50(times)), "first_call_s": rnd(first)}
        return go

    with torch.inference_mode():
        sec.step("prefill_1_token", step(1, max(plan["desc_runs"], 3)))
        sec.step(f"describe_{plan['desc_new']}_tokens", step(plan["desc_new"], plan["desc_runs"]))
    steps = sec.rec["steps"]
    peaks = [s["peak_reserved_gib"] for s in steps.values() if "peak_reserved_gib" in s]
    sec.rec["memory"]["production_peak_reserved_gib"] = max(peaks) if peaks else None
    sec.rec["memory"]["production_note"] = "one image, dynamic cache, eager: how the Describer role generates"
    sec.rec["headline"] = {k: s.get("p50_s") for k, s in steps.items()}


# -- painter: FLUX.1-schnell -----------------------------------------------------------------------------
class Fp8Linear(torch.nn.Module):
    """A Linear with float8_e4m3fn weights (one scale per output row) and activations quantised per row
    on the fly, multiplied by torch._scaled_mm (Hopper's fp8 tensor cores); bias added in bf16."""

    def __init__(self, linear: torch.nn.Linear, *, fast_accum: bool, emulate: bool):
        super().__init__()
        w = linear.weight.detach()
        scale = (w.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)  # (out, 1)
        self.register_buffer("weight", (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn))
        self.register_buffer("w_scale", scale.t().contiguous())  # (1, out)
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.fast_accum, self.emulate = fast_accum, emulate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xs = (x2.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)  # (rows, 1)
        xq = (x2.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        if self.emulate:
            y = ((xq.float() * xs) @ (self.weight.float() * self.w_scale.t()).t()).to(x.dtype)
        else:
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.w_scale, out_dtype=x.dtype,
                                 use_fast_accum=self.fast_accum)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def to_fp8(blocks: list[torch.nn.Module], ctx: Ctx) -> dict:
    """Swap every Linear of the transformer blocks (not the AdaLayerNorm ones, whose input is one row)."""
    targets = []
    for block in blocks:
        for name, mod in block.named_modules():
            if isinstance(mod, torch.nn.Linear) and "norm" not in name \
                    and mod.in_features % 16 == 0 and mod.out_features % 16 == 0:
                targets.append((block, name, mod))
    if not targets:
        raise RuntimeError("no Linear to quantise")
    # check one layer against bf16 on random rows, and find out whether _scaled_mm runs here
    _, _, lin = targets[0]
    x = torch.randn(256, lin.in_features, device=ctx.device, dtype=lin.weight.dtype)
    ref = lin(x).float()
    emulate, why = False, None
    try:
        y = Fp8Linear(lin, fast_accum=True, emulate=False)(x).float()
    except Exception as exc:
        if ctx.cuda:
            raise
        emulate, why = True, f"{type(exc).__name__}: {str(exc)[:200]}"
        y = Fp8Linear(lin, fast_accum=True, emulate=True)(x).float()
    rel = float((y - ref).norm() / ref.norm())
    check(rel < 0.1, f"fp8 Linear relative error {rel:.3g} against bf16: wrong, not only imprecise")
    before = sum(m.weight.numel() * m.weight.element_size() for _, _, m in targets)
    count = len(targets)
    del lin, x, ref, y
    while targets:  # one layer at a time, so the bf16 weights go as their fp8 copies come
        block, name, mod = targets.pop()
        parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
        setattr(parent, name.rsplit(".", 1)[-1], Fp8Linear(mod, fast_accum=True, emulate=emulate))
        del block, mod, parent
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
    return {"linears": count, "scaling": "rowwise (per output row / per activation row)",
            "fast_accum": True, "impl": "emulated" if emulate else "torch._scaled_mm",
            "emulated_because": why, "layer_rel_err_vs_bf16": rnd(rel, 3),
            "weights_gib_before": round(before / GIB, 3), "weights_gib_after": round(before / 2 / GIB, 3)}


def run_painter(ctx: Ctx, sec: Section) -> None:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    plan = ctx.plan
    cfg = flux_configs(ctx.kit)
    with ctx.build():
        clip = CLIPTextModel(cfg["clip"]).eval()
        t5 = T5EncoderModel(cfg["t5"]).eval()
        transformer = FluxTransformer2DModel(**cfg["transformer"]).eval()
        levels = len(cfg["vae"]["block_out_channels"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                            up_block_types=("UpDecoderBlock2D",) * levels, use_quant_conv=False,
                            use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
                            **cfg["vae"]).eval()
    # from_pretrained(dtype=bf16), as the role loads it, keeps T5's `wo` projections in float32: so here
    keep = (getattr(t5, "_keep_in_fp32_modules", None) or []) if ctx.dtype != torch.float32 else []
    for name, mod in t5.named_modules():
        if name.rsplit(".", 1)[-1] in keep:
            mod.float()
    parts = {"clip_text": clip, "t5_encoder": t5, "transformer": transformer, "vae": vae}
    sec.rec["t5_float32_modules"] = list(keep)
    sec.rec["parameters"] = {k: n_params(m) for k, m in parts.items()}
    sec.rec["memory"]["weights_gib"] = weights_gib(*parts.values())

    size, steps = plan["paint_size"], plan["paint_steps"]
    scale = 2 ** (levels - 1)  # the VAE's downsampling (8 for FLUX)
    lat_side = size // scale
    tokens_side = lat_side // 2
    channels = transformer.config.in_channels  # 16 latent channels x 2x2 packing
    latent_channels = cfg["vae"]["latent_channels"]
    g = torch.Generator(device="cpu").manual_seed(0)
    clip_ids = torch.randint(0, 49405, (1, plan["clip_len"]), generator=g)
    clip_ids[:, -1] = 49407
    clip_ids = clip_ids.to(ctx.device)
    t5_ids = torch.randint(0, cfg["t5"].vocab_size, (1, plan["t5_len"]), generator=g).to(ctx.device)
    rows = torch.arange(tokens_side).repeat_interleave(tokens_side)
    cols = torch.arange(tokens_side).repeat(tokens_side)
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], 1).to(ctx.device, ctx.dtype)
    txt_ids = torch.zeros(plan["t5_len"], 3, device=ctx.device, dtype=ctx.dtype)
    noise = torch.randn(1, tokens_side * tokens_side, channels, generator=g).to(ctx.device, ctx.dtype)
    # FLUX.1-schnell's schedule: shift 1, no dynamic shifting, so sigmas run 1 .. 1/steps, then 0
    sigmas = [1.0 - i / steps for i in range(steps)] + [0.0]
    timesteps = [torch.full((1,), s, device=ctx.device, dtype=ctx.dtype) for s in sigmas[:-1]]
    vae_scaling, vae_shift = vae.config.scaling_factor, vae.config.shift_factor
    sec.rec["workload"] = {"image": f"{size}x{size}", "steps": steps, "image_tokens": tokens_side**2,
                           "t5_tokens": plan["t5_len"], "clip_tokens": plan["clip_len"], "guidance": None}

    def paint(attn: Callable[[], Any]) -> dict:
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if ctx.cuda else None
        marks: list[float] = []

        def mark(i: int):
            if ev is not None:
                ev[i].record()
            else:
                marks.append(time.perf_counter())

        ctx.sync()
        t = time.perf_counter()
        mark(0)
        pooled = clip(input_ids=clip_ids).pooler_output
        prompt = t5(input_ids=t5_ids).last_hidden_state
        mark(1)
        lat = noise.clone()
        with attn():
            for i in range(steps):
                v = transformer(hidden_states=lat, encoder_hidden_states=prompt, pooled_projections=pooled,
                                timestep=timesteps[i], img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
                lat = (lat.float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(ctx.dtype)
        mark(2)
        z = lat.view(1, tokens_side, tokens_side, latent_channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        z = z.reshape(1, latent_channels, lat_side, lat_side) / vae_scaling + vae_shift
        decoded = vae.decode(z, return_dict=False)[0]
        img = ((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        mark(3)
        pixels = img.cpu()  # the PNG's pixels reach the host, as the role's output_type="pil" does
        total = time.perf_counter() - t
        if ev is not None:
            ev[3].synchronize()
            phases = [ev[i].elapsed_time(ev[i + 1]) / 1000 for i in range(3)]
        else:
            phases = [marks[i + 1] - marks[i] for i in range(3)]
        # the answer, checked once the clock has stopped: an image of the size asked for, no NaN before uint8
        check_output(f"painting {size}x{size}", decoded, (1, 3, size, size))
        check(tuple(pixels.shape) == (1, 3, size, size), f"painting: pixels of shape {tuple(pixels.shape)}")
        return {"total": total, "encode": phases[0], "denoise": phases[1], "decode": phases[2]}

    def measure(attn: Callable[[], Any] = contextlib.nullcontext, warmup: int = 1) -> dict:
        ctx.sync()
        t = time.perf_counter()
        paint(attn)
        first = time.perf_counter() - t
        for _ in range(warmup - 1):
            paint(attn)
        runs = [paint(attn) for _ in range(plan["paint_runs"])]
        res = {"p50_s": rnd(p50([r["total"] for r in runs])), "runs_s": [rnd(r["total"]) for r in runs]}
        for phase in ("encode", "denoise", "decode"):
            res[f"{phase}_p50_s"] = rnd(p50([r[phase] for r in runs]))
        res["first_call_s"] = rnd(first)
        return res

    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)

    def compile_all() -> dict:
        # regional compilation (as diffusers' compile_repeated_blocks): every block shares one graph
        # per block type, so compiling costs seconds, not minutes; plus the VAE decoder, whole
        dynamo_reset()
        kw = ctx.compile_kw(None)
        for b in blocks:
            b.compile(**kw)
        vae.decoder.compile(**kw)
        return {"compiled": "transformer blocks (regional) + VAE decoder",
                "compile_kw": {k: str(v) for k, v in kw.items()}}

    results: dict[str, dict] = {}

    def record(name: str, fn: Callable[[], dict]) -> None:
        res = sec.step(name, fn)
        if res and "p50_s" in res:
            results[name] = res
            base = results.get("eager")
            prev = [r for k, r in results.items() if k != name]
            if base and name != "eager":
                res["speedup_vs_eager"] = rnd(base["p50_s"] / res["p50_s"], 3)
            if prev:
                res["speedup_vs_previous"] = rnd(prev[-1]["p50_s"] / res["p50_s"], 3)
            sec.save()

    with torch.inference_mode():
        record("eager", lambda: measure())

        def compiled_step() -> dict:
            info = compile_all()
            return {**info, **measure(warmup=2)}

        record("compile", compiled_step)

        def fp8_step() -> dict:
            info = to_fp8(blocks, ctx)
            info["conversion_peak_reserved_gib"] = ctx.mem_peak().get("peak_reserved_gib")
            ctx.mem_reset()  # the step's peak is the fp8 model's, not the conversion's
            info.update(compile_all())
            return {**info, **measure(warmup=2)}

        record("compile_fp8", fp8_step)

        def cudnn_step() -> dict:
            if not ctx.cuda:
                return {"skipped": "cuDNN attention needs CUDA"}
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def attn():
                return sdpa_kernel([SDPBackend.CUDNN_ATTENTION])

            heads, dim = transformer.config.num_attention_heads, transformer.config.attention_head_dim
            q = torch.randn(1, heads, tokens_side**2 + plan["t5_len"], dim, device=ctx.device, dtype=ctx.dtype)
            with attn():  # raises "No available kernel" where this torch has no cuDNN SDPA for the shape
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            info = compile_all()  # recompiled inside the context below: the traced graph takes cuDNN's SDPA
            return {**info, "attention": "cuDNN SDPA in the transformer (encoders and VAE unchanged)",
                    **measure(attn, warmup=2)}

        record("compile_fp8_cudnn_attention", cudnn_step)
    steps_rec = sec.rec["steps"]
    sec.rec["memory"]["production_peak_reserved_gib"] = steps_rec.get("eager", {}).get("peak_reserved_gib")
    sec.rec["memory"]["production_note"] = "eager bf16, one 1024x1024 image: how the Painter role runs today"
    best = min(results.values(), key=lambda r: r["p50_s"]) if results else None
    sec.rec["headline"] = {k: r["p50_s"] for k, r in results.items()}
    if best:
        sec.rec["best"] = {"step": next(k for k, r in results.items() if r is best), "p50_s": best["p50_s"]}


# -- guard: Qwen3Guard-Gen-0.6B and a ViT-base/16 NSFW classifier (models/guard.py) ---------------------
def guard_configs(kit: str):
    """Qwen/Qwen3Guard-Gen-0.6B (Qwen3-0.6B's shape) and Falconsai/nsfw_image_detection (ViT-base/16 at 224,
    two labels) at `full`, as models/kit/guard.py writes them."""
    from transformers import Qwen3Config, ViTConfig

    if kit == "full":
        text = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                    rope_theta=1000000.0)
        image: dict = {}  # ViTConfig's defaults are ViT-base/16 at 224
    else:
        text = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
        image = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     image_size=32, patch_size=8)
    return (Qwen3Config(**text, rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0),
            ViTConfig(**image, num_labels=2))


def run_guard(ctx: Ctx, sec: Section) -> None:
    """A text check as the Guard scores it: the batch's prompts left-padded, one prefill read at its last
    position (3 label ids), then 5 continuation tokens on the cached keys (9 category ids); and the image
    classifier. Prompt lengths vary over the batch's last quarter, so padding is part of the cost."""
    import inspect

    from transformers import Qwen3ForCausalLM, ViTForImageClassification

    plan = ctx.plan
    text_cfg, image_cfg = guard_configs(ctx.kit)
    with ctx.build():
        model, vit = Qwen3ForCausalLM(text_cfg).eval(), ViTForImageClassification(image_cfg).eval()
    sec.rec["parameters"] = {"text": n_params(model), "image": n_params(vit)}
    sec.rec["memory"]["weights_gib"] = weights_gib(model, vit)
    # transformers 5 renamed past_key_values to cache (the project's pin); the GPU host may have either.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    labels, cats = list(range(100, 103)), list(range(200, 209))

    def score(ids, mask):
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cont = torch.full((ids.shape[0], 5), 300, device=ctx.device)
        out2 = model(input_ids=cont, attention_mask=torch.cat([mask, torch.ones_like(cont)], 1),
                     position_ids=pos[:, -1:] + 1 + torch.arange(5, device=ctx.device), use_cache=True,
                     logits_to_keep=1, **{cache_kw: getattr(out, cache_kw)})
        return out.logits[:, -1, labels].float().softmax(-1), out2.logits[:, -1, cats].float().softmax(-1)

    def text_step(batch: int) -> Callable[[], dict]:
        def go() -> dict:
            g = torch.Generator(device="cpu").manual_seed(batch)
            n = plan["guard_prompt"]
            lengths = torch.randint(n - n // 4, n + 1, (batch,), generator=g) if batch > 1 else torch.tensor([n])
            mask = (torch.arange(n)[None, :] >= (n - lengths)[:, None]).long().to(ctx.device)
            ids = torch.randint(400, text_cfg.vocab_size - 100, (batch, n), generator=g).to(ctx.device) * mask
            first = ctx.time(lambda: score(ids, mask))
            times = [ctx.time(lambda: score(ids, mask)) for _ in range(plan["guard_runs"])]
            p_labels, p_cats = score(ids, mask)
            check_output(f"guard labels, batch {batch}", p_labels, (batch, 3))
            check_output(f"guard categories, batch {batch}", p_cats, (batch, 9))
            return {"batch": batch, "prompt_tokens": n, "p50_s": rnd(p50(times)),
                    "ms_per_prompt": rnd(1000 * p50(times) / batch), "prompts_per_s": rnd(batch / p50(times)),
                    "runs_s": [rnd(t) for t in times], "first_call_s": rnd(first)}
        return go

    def image_step(batch: int) -> Callable[[], dict]:
        def go() -> dict:
            side = image_cfg.image_size
            px = torch.randn(batch, 3, side, side, device=ctx.device, dtype=ctx.dtype)
            first = ctx.time(lambda: vit(pixel_values=px))
            times = [ctx.time(lambda: vit(pixel_values=px)) for _ in range(plan["guard_runs"])]
            check_output(f"guard image classifier, batch {batch}", vit(pixel_values=px).logits, (batch, 2))
            return {"batch": batch, "image": f"{side}x{side}", "p50_s": rnd(p50(times)),
                    "ms_per_image": rnd(1000 * p50(times) / batch), "img_per_s": rnd(batch / p50(times)),
                    "first_call_s": rnd(first)}
        return go

    with torch.inference_mode():
        for b in (1, plan["guard_batch"]):
            sec.step(f"text_b{b}", text_step(b))
        for b in (1, plan["guard_batch"]):
            sec.step(f"image_b{b}", image_step(b))
    steps = sec.rec["steps"]
    peaks = [s["peak_reserved_gib"] for s in steps.values() if "peak_reserved_gib" in s]
    sec.rec["memory"]["production_peak_reserved_gib"] = max(peaks) if peaks else None
    sec.rec["memory"]["production_note"] = "both models loaded; a call holds at most max_batch (16) inputs"
    sec.rec["headline"] = {k: s.get("ms_per_prompt", s.get("ms_per_image")) for k, s in steps.items()}


# -- summary: the tables for RESULTS.md ------------------------------------------------------------------
def load_shares() -> tuple[dict[str, float], str]:
    path = REPO / "serve_config.yaml"
    try:
        import yaml

        doc = yaml.safe_load(path.read_text())
        args = next(a["args"] for a in doc["applications"] if a.get("name") == "atelier")
        shares = {r: float(args[r]["deployment"]["ray_actor_options"]["num_gpus"]) for r in ROLES + OPT_IN
                  if r in args or r in ROLES}
        return shares, str(path.relative_to(REPO))
    except Exception as exc:  # no PyYAML, or the file moved: the values it had when this was written
        return dict(DEFAULT_SHARES), f"built-in copy of serve_config.yaml ({type(exc).__name__})"


def summarise(results_dir: Path, out: Path) -> dict:
    recs = {}
    for name in ROLES + OPT_IN:  # an opt-in section's file is there only when it ran
        p = results_dir / f"{name}.json"
        if p.exists():
            recs[name] = json.loads(p.read_text())
    shares, shares_from = load_shares()
    env = next((r.get("env") for r in recs.values() if r.get("env")), {})
    memory_rows = []
    for role in ROLES + tuple(r for r in OPT_IN if r in recs and r in shares):  # the guard's row: when it ran
        rec = recs.get(role)
        mem = (rec or {}).get("memory", {})
        peaks = [s.get("peak_reserved_gib") for s in (rec or {}).get("steps", {}).values()
                 if s.get("peak_reserved_gib") is not None]
        prod = mem.get("production_peak_reserved_gib")
        overhead = mem.get("cuda_overhead_gib")
        row = {"role": role, "share": shares[role], "status": (rec or {}).get("status", "not run"),
               "weights_gib": mem.get("weights_gib"), "production_peak_gib": prod,
               "max_peak_gib": max(peaks) if peaks else None, "cuda_overhead_gib": overhead, "cards": {}}
        need = None if prod is None else prod + (overhead or 0.0)
        row["need_gib"] = None if need is None else round(need, 2)
        for card, mib in CARDS_MIB.items():
            have = shares[role] * mib / 1024
            verdict = "not measured" if need is None else ("fits" if need <= have else "TOO SMALL")
            row["cards"][card] = {"share_gib": round(have, 2), "verdict": verdict,
                                  "used_pct": None if need is None else round(100 * need / have)}
        memory_rows.append(row)

    def step(role: str, name: str, key: str):
        return recs.get(role, {}).get("steps", {}).get(name, {}).get(key)

    emb = recs.get("embedder", {}).get("steps", {})
    img_rates = [s["img_per_s"] for k, s in emb.items() if k.startswith("image_") and "img_per_s" in s]
    paint = recs.get("painter", {})
    goals = {
        "painter_p50_s": {"goal": f"<= {GOALS['painter_p50_s']} s", "best": (paint.get("best") or {}).get("p50_s")},
        "embedder_img_s": {"goal": f">= {GOALS['embedder_img_s']:.0f} img/s",
                           "best": max(img_rates) if img_rates else None},
        "writer_tok_s_b1": {"goal": f">= {GOALS['writer_tok_s_b1']:.0f} tok/s",
                            "best": step("writer", "b1_static_compiled", "tok_per_s")},
    }
    measured = bool(env.get("gpu")) and all(r.get("kit") == "full" for r in recs.values())
    for key, g in goals.items():
        best = g["best"]
        if best is None or not measured:  # the tiny kit on the CPU proves the script runs, nothing more
            g["met"] = None
        else:
            g["met"] = best <= GOALS[key] if key == "painter_p50_s" else best >= GOALS[key]
    wrong = [f"{role}/{name}: {st['wrong']}" for role, rec in recs.items()
             for name, st in rec.get("steps", {}).items() if "wrong" in st]
    summary = {"env": env, "kit": sorted({str(r.get("kit")) for r in recs.values()}), "shares_from": shares_from,
               "memory": memory_rows, "goals": goals,
               "sections": {r: recs[r].get("status") for r in recs}, "wrong": wrong}
    md = summary_markdown(recs, summary)
    summary["markdown"] = md
    write_json(out / "summary.json", summary)  # the record, wrong steps listed; the tables only once checked:
    (out / "summary.md").unlink(missing_ok=True)
    check(not wrong, f"{len(wrong)} step(s) measured wrong answers: {'; '.join(wrong)[:1500]}")
    checks.ready_to_publish(str(out / "summary.md"))
    (out / "summary.md").write_text(md)
    return summary


def _f(x, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _num(x) -> str:
    return "-" if x is None else f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def summary_markdown(recs: dict, s: dict) -> str:
    env = s["env"]
    lines = [f"GPU: {env.get('gpu') or 'none (CPU)'}, driver {env.get('driver', '-')}, "
             f"torch {env.get('torch', '-')} (CUDA {env.get('torch_cuda') or '-'}), transformers "
             f"{env.get('transformers', '-')}, diffusers {env.get('diffusers', '-')}, Python {env.get('python', '-')}.",
             f"Kit: {', '.join(map(str, s['kit'])) or '-'} (random-weight stand-ins built on the device). "
             f"Command: `{env.get('command', '-')}`", ""]
    lines += ["| role | measurement | eager | compiled |", "|---|---|---|---|"]
    emb = recs.get("embedder", {}).get("steps", {})
    for b in (64, 256):
        e, c = emb.get(f"image_b{b}_eager", {}), emb.get(f"image_b{b}_compiled", {})
        lines.append(f"| embedder | image tower, batch {b}, img/s | {_f(e.get('img_per_s'), '{:,.0f}')} | "
                     f"{_f(c.get('img_per_s'), '{:,.0f}')} |")
    t = next((v for k, v in emb.items() if k.startswith("text_")), {})
    lines.append(f"| embedder | text tower, batch {t.get('batch', '-')} x {t.get('tokens', '-')} tokens, texts/s | "
                 f"{_f(t.get('texts_per_s'), '{:,.0f}')} | - |")
    for family, name in (("siglip2", "SigLIP 2 base/16-224"), ("chinese_clip", "Chinese-CLIP base/16")):
        e = next((v for k, v in emb.items() if k.startswith(f"{family}_image_") and k.endswith("_eager")), {})
        c = next((v for k, v in emb.items() if k.startswith(f"{family}_image_") and k.endswith("_compiled")), {})
        t = next((v for k, v in emb.items() if k.startswith(f"{family}_text_")), {})
        lines.append(f"| embedder ({name}) | image tower, batch {e.get('batch', '-')}, img/s | "
                     f"{_f(e.get('img_per_s'), '{:,.0f}')} | {_f(c.get('img_per_s'), '{:,.0f}')} |")
        lines.append(f"| embedder ({name}) | text tower, batch {t.get('batch', '-')} x {t.get('tokens', '-')} tokens, "
                     f"texts/s | {_f(t.get('texts_per_s'), '{:,.0f}')} | - |")
    wr = recs.get("writer", {}).get("steps", {})
    for b in (1, 16):
        e = wr.get("b1_eager_dynamic", {}) if b == 1 else {}
        c = wr.get(f"b{b}_static_compiled", {})
        n = c.get("new_tokens") or e.get("new_tokens") or "-"
        lines.append(f"| writer | greedy, {n} new tokens, batch {b}, tok/s (all sequences) | "
                     f"{_f(e.get('tok_per_s'))} | {_f(c.get('tok_per_s'))} |")
    de = recs.get("describer", {}).get("steps", {})
    d = next((v for k, v in de.items() if k.startswith("describe_")), {})
    pre = de.get("prefill_1_token", {})
    lines.append(f"| describer | one {d.get('image', '-')} image to {d.get('new_tokens', '-')} tokens, s (p50) | "
                 f"{_f(d.get('p50_s'), '{:.3f}')} | - |")
    lines.append(f"| describer | same, to the first token, s (p50) | {_f(pre.get('p50_s'), '{:.3f}')} | - |")
    for name, r in recs.get("guard", {}).get("steps", {}).items():  # only when the guard section ran
        what = (f"text check, batch {r.get('batch', '-')} x {r.get('prompt_tokens', '-')} tokens, ms per text (p50)"
                if name.startswith("text_") else
                f"image check, batch {r.get('batch', '-')}, {r.get('image', '-')}, ms per image (p50)")
        lines.append(f"| guard | {what} | {_f(r.get('ms_per_prompt', r.get('ms_per_image')), '{:.2f}')} | - |")
    lines.append("")
    pa = recs.get("painter", {})
    w = pa.get("workload", {})
    lines += [f"Painter, FLUX.1-schnell stand-in, {w.get('image', '-')}, {w.get('steps', '-')} steps, "
              f"{w.get('t5_tokens', '-')} T5 tokens (latency per image, p50):", "",
              "| step | p50 s | encode s | denoise s | decode s | gain vs previous | vs eager | peak GiB |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in pa.get("steps", {}).items():
        if "p50_s" not in r:
            why = r.get("error") or r.get("skipped") or "-"
            lines.append(f"| {name} | {why[:80]} | | | | | | |")
            continue
        lines.append(f"| {name} | {r['p50_s']:.3f} | {_f(r.get('encode_p50_s'), '{:.3f}')} | "
                     f"{_f(r.get('denoise_p50_s'), '{:.3f}')} | {_f(r.get('decode_p50_s'), '{:.3f}')} | "
                     f"{_f(r.get('speedup_vs_previous'), '{:.2f}x')} | {_f(r.get('speedup_vs_eager'), '{:.2f}x')} | "
                     f"{_f(r.get('peak_reserved_gib'), '{:.1f}')} |")
    lines += ["", "Peak GPU memory per role against its share (num_gpus x the card's memory; "
              f"shares from {s['shares_from']}):", ""]
    cards = list(CARDS_MIB)
    lines += ["| role | share | weights GiB | peak GiB, production settings | peak GiB, any step | "
              "+ CUDA context GiB | "
              + " | ".join(f"{c}: share GiB, verdict" for c in cards) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(cards)]
    for row in s["memory"]:
        cells = []
        for c in cards:
            cc = row["cards"][c]
            pct = "" if cc["used_pct"] is None else f" ({cc['used_pct']}% used)"
            cells.append(f"{cc['share_gib']:.1f}, {cc['verdict']}{pct}")
        lines.append(f"| {row['role']} | {row['share']} | {_f(row['weights_gib'], '{:.2f}')} | "
                     f"{_f(row['production_peak_gib'], '{:.2f}')} | {_f(row['max_peak_gib'], '{:.2f}')} | "
                     f"{_f(row['cuda_overhead_gib'], '{:.2f}')} | " + " | ".join(cells) + " |")
    lines += ["", "Goals: " + "; ".join(
        f"{k} {g['goal']}: {_num(g['best'])} ({'met' if g['met'] else 'not met' if g['met'] is False else '-'})"
        for k, g in s["goals"].items())]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------------------
RUNNERS = {"embedder": run_embedder, "describer": run_describer, "writer": run_writer, "painter": run_painter,
           "guard": run_guard}


def run_section(ctx: Ctx, name: str) -> str:
    sec = Section(ctx, name)
    sec.save()
    log(f"{name}: start ({ctx.left():.0f} s of budget left)")
    t = time.perf_counter()
    ctx.mem_reset(empty=True)
    try:
        RUNNERS[name](ctx, sec)
        failed = [k for k, v in sec.rec["steps"].items() if "error" in v]
        wrong = [k for k, v in sec.rec["steps"].items() if "wrong" in v]
        sec.rec["status"] = "wrong" if wrong else "partial" if failed else "ok"
    except Exception as exc:
        sec.rec["status"] = "error"
        sec.rec["error"] = f"{type(exc).__name__}: {exc}"
        sec.rec["traceback"] = traceback.format_exc()[-4000:]
        log(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
    sec.rec["memory"]["cuda_overhead_gib"] = cuda_overhead_gib(ctx)
    sec.rec["seconds"] = round(time.perf_counter() - t, 1)
    sec.save()
    log(f"{name}: {sec.rec['status']} in {sec.rec['seconds']} s")
    gc.collect()
    ctx.mem_reset(empty=True)
    dynamo_reset()
    return sec.rec["status"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for SECTION.json, summary.json, summary.md")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--kit", default="full", choices=["full", "tiny"])
    ap.add_argument("--only", default=",".join(s for s in SECTIONS if s not in OPT_IN),
                    help=f"comma list of {','.join(SECTIONS)} (default: all but {','.join(OPT_IN)})")
    ap.add_argument("--compile-backend", choices=["inductor", "eager"], default=None,
                    help="torch.compile backend (default: inductor on cuda, eager on cpu)")
    ap.add_argument("--compile-mode", default="auto",
                    help="inductor mode for every compile; 'auto': reduce-overhead for the embedder and the "
                         "writer's decoding step, the default mode for the painter")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="no new step starts after this many seconds from the start")
    ap.add_argument("--results", type=Path, default=None, help="where summary reads section files (default --out)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA device (use --device cpu --kit tiny here)")
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args)
    ctx.env.update(environment(ctx, argv))
    log(f"env: {json.dumps(ctx.env)}")
    if ctx.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    statuses = {}
    for name in SECTIONS:
        if name in only and name != "summary":
            statuses[name] = run_section(ctx, name)
    if "summary" in only:
        summary = summarise(args.results or args.out, args.out)
        print(summary["markdown"], flush=True)
    log(f"done in {time.perf_counter() - ctx.t0:.0f} s: {statuses}")
    if "wrong" in statuses.values():  # summary (when asked) has already refused to write summary.md
        raise BenchmarkWrong(f"wrong answers in {sorted(k for k, v in statuses.items() if v == 'wrong')}")
    return 0 if all(s == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    raise SystemExit(checks.run(main))
