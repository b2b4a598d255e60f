"""Benchmark one USO image (subject + 1 style): seconds/image, peak memory, fraction of peak.

    python benchmarks/bench_uso.py                              # CPU, "small" random model, fp32
    python benchmarks/bench_uso.py --device cuda --size full    # H100: 1024^2, 25 steps, bf16

Weights are random (`USOModel.load_random`): the speed of a dense model does not depend on its
values. Every timed image starts with cold caches (style tokens, subject latent and prompt
embeddings are recomputed), i.e. the worst case of a batch job. FLOPs are counted analytically
for the token layout actually run (transformer linears incl. the LoRA branch, and attention;
modulation/embedders/VAE/SigLIP are not counted), as in reference/performance.md, which gives
~99 TFLOP/step at 1024^2 with a 512^2 subject and one style.

It also compares USO's cached style path (SigLIP + projector once per image) with the
reference's, which re-runs SigLIP + projector inside every denoising step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from pipeline.models.base import GenerationRequest, ModelOptions
from pipeline.models.flux.packing import pack_latents
from pipeline.models.uso.model import USOModel
from pipeline.models.uso.prepare import subject_grid
from pipeline.models.uso.sampling import DenoiseBatch, denoise, position_ids

H100_BF16_PEAK_TFLOPS = 989.0  # dense, SXM datasheet
# size (pipeline.models.architecture) -> (resolution, steps, content_ref)
SIZE_DEFAULTS = {"full": (1024, 25, 512), "small": (256, 4, 256), "tiny": (64, 2, 64)}


def step_flops(
    hidden: int, num_double: int, num_single: int, lora_rank: int, n_txt: int, n_img: int
) -> dict[str, float]:
    """FLOPs of one transformer call, batch 1, with n_txt text-side (style + T5) and n_img
    image-side (target + subject) tokens. Per token and block: 12 h^2 multiply-adds in the
    linears (qkv 3, out 1, MLP 8; a single block's linear1 7 + linear2 5); LoRA 6 h r per
    double-block stream and 10 h r per single block; attention 2 L^2 h."""
    tokens = n_txt + n_img
    blocks = num_double + num_single
    linear = 2 * 12 * hidden * hidden * tokens * blocks
    lora = 2 * lora_rank * hidden * tokens * (6 * num_double + 10 * num_single)
    attention = 4 * tokens * tokens * hidden * blocks
    return {
        "linear": linear,
        "lora": lora,
        "attention": attention,
        "total": linear + lora + attention,
    }


def _lora_rank(model: USOModel) -> int:
    for module in model.components.transformer.flux.modules():
        if hasattr(module, "down") and isinstance(module.down, torch.nn.Parameter):
            return module.down.shape[0]
    return 0  # merged


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def _picture(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _clear_caches(model: USOModel) -> None:
    model.components.style_encoder.cache.clear()
    model.subject_cache.clear()
    model.text_encoders.clear_cache()


def time_images(model: USOModel, request: GenerationRequest, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _clear_caches(model)
        _sync(model.device)
        start = time.perf_counter()
        outcome = model.generate([request])[0]
        _sync(model.device)
        times.append(time.perf_counter() - start)
        if not outcome.ok:
            raise RuntimeError(f"generation failed: {outcome.error}")
    return times


@torch.inference_mode()
def time_style_paths(model: USOModel, request: GenerationRequest, steps: int) -> dict[str, float]:
    """Denoising with style tokens computed once vs re-computed (SigLIP + projector) every
    step as the reference does. Same transformer work in both; only the style path differs."""
    parts, device = model.components, model.device
    style = request.styles[0].convert("RGB")
    encoder, transformer = parts.style_encoder, parts.transformer
    tokens = encoder.tokens([style], use_cache=False)
    t5, pooled = model.text_encoders.encode(request.prompt)
    width, height = request.width, request.height
    noise = torch.randn(1, 16, height // 8, width // 8)
    sub_w, sub_h = subject_grid(request.subject.size, model.settings.content_ref)
    subject = torch.randn(1, 16, sub_h // 8, sub_w // 8, device=device)
    sigmas = torch.linspace(1, 0, steps + 1).tolist()
    batch = DenoiseBatch(noise, t5, pooled, torch.tensor([4.0]), sigmas, tokens, subject)

    def once() -> float:
        _sync(device)
        start = time.perf_counter()
        batch.style_tokens = encoder.tokens([style], use_cache=False)
        denoise(transformer, batch)
        _sync(device)
        return time.perf_counter() - start

    def every_step() -> float:
        dtype = transformer.dtype
        x = batch.noise.to(device, dtype)
        x, subj = pack_latents(x), pack_latents(subject.to(dtype))
        img_ids, txt_ids = (i.to(device) for i in position_ids(batch))
        _sync(device)
        start = time.perf_counter()
        for sigma, nxt in itertools.pairwise(sigmas):
            fresh = encoder.tokens([style], use_cache=False)  # the reference's per-step SigLIP
            with transformer.style_tokens(fresh.to(dtype)):
                t = torch.full((1,), sigma, device=device, dtype=dtype)
                v = transformer.velocity(
                    x,
                    subj,
                    t5.to(dtype),
                    pooled.to(dtype),
                    t,
                    torch.full((1,), 4.0, device=device, dtype=dtype),
                    img_ids,
                    txt_ids,
                )
            x = x + (nxt - sigma) * v
        _sync(device)
        return time.perf_counter() - start

    def style_tokens_only() -> float:
        _sync(device)
        start = time.perf_counter()
        encoder.tokens([style], use_cache=False)
        _sync(device)
        return time.perf_counter() - start

    once(), every_step()  # warm-up
    one_call = min(style_tokens_only() for _ in range(3))
    return {
        "style_once_s": min(once() for _ in range(2)),
        "style_every_step_s": min(every_step() for _ in range(2)),
        "siglip_projector_call_s": one_call,
        "saved_by_caching_s": one_call * (steps - 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZE_DEFAULTS), default="small")
    parser.add_argument("--resolution", type=int, help="target side (default by size)")
    parser.add_argument("--steps", type=int, help="denoising steps (default by size)")
    parser.add_argument("--content-ref", type=int, help="subject long side (default by size)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_BF16_PEAK_TFLOPS,
        help="accelerator bf16 dense peak for the MFU figure (H100 SXM: 989)",
    )
    parser.add_argument("--skip-style-comparison", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    side, steps, content_ref = SIZE_DEFAULTS[args.size]
    side, steps = args.resolution or side, args.steps or steps
    content_ref = args.content_ref or content_ref
    options = ModelOptions(
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        fp8=args.fp8,
        extra={"content_ref": content_ref},
    )
    load_start = time.perf_counter()
    model = USOModel.load_random(options, size=args.size)
    _sync(model.device)
    load_s = time.perf_counter() - load_start
    resident_gib = (
        torch.cuda.memory_allocated(model.device) / 2**30 if model.device.type == "cuda" else None
    )
    request = GenerationRequest(
        "bench",
        "a portrait in the style of the reference",
        seed=0,
        subject=_picture(1, 768, 1024),
        styles=[_picture(2, 640, 640)],
        width=side,
        height=side,
        steps=steps,
    )
    time_images(model, request, 1)  # warm-up (and compile, if asked)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    times = time_images(model, request, args.repeats)
    seconds, best = statistics.median(times), min(times)

    sub_w, sub_h = subject_grid(request.subject.size, content_ref)
    n_img = (side // 16) ** 2 + (sub_w // 16) * (sub_h // 16)
    n_style = model.components.style_encoder.projector.tokens_per_image
    n_txt = n_style + model.text_encoders.max_sequence_length
    cfg = model.components.transformer.flux.config
    flops = step_flops(
        cfg.num_attention_heads * cfg.attention_head_dim,
        cfg.num_layers,
        cfg.num_single_layers,
        _lora_rank(model),
        n_txt,
        n_img,
    )
    achieved = flops["total"] * steps / best  # best run: the least disturbed by other load
    figures = {
        "device": str(model.device),
        "dtype": str(model.dtype),
        "size": args.size,
        "resolution": side,
        "steps": steps,
        "subject_tokens": n_img - (side // 16) ** 2,
        "text_side_tokens": n_txt,
        "image_side_tokens": n_img,
        "load_s": round(load_s, 2),
        "seconds_per_image": round(seconds, 3),
        "best_seconds_per_image": round(best, 3),
        "all_runs_s": [round(t, 3) for t in times],
        "peak_memory_gib": round(_peak_memory_gib(model.device), 3),
        "resident_after_load_gib": None if resident_gib is None else round(resident_gib, 3),
        "tflop_per_step": round(flops["total"] / 1e12, 4),
        "tflop_per_step_lora": round(flops["lora"] / 1e12, 4),
        "achieved_tflops": round(achieved / 1e12, 4),
        "fraction_of_bf16_peak": round(achieved / (args.peak_tflops * 1e12), 5),
        "peak_tflops_assumed": args.peak_tflops,
    }
    if not args.skip_style_comparison:
        figures.update({k: round(v, 4) for k, v in time_style_paths(model, request, steps).items()})
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    if model.device.type == "cpu":
        print(
            "note: on a CPU, peak_memory_gib is the process's max RSS, and fraction_of_bf16_peak "
            "is relative to an H100's bf16 peak (it only shows the scale of the gap)"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
