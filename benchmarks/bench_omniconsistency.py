"""OmniConsistency speed: seconds/image, peak memory, overhead versus plain FLUX text-to-image
in the same run, and the fraction of the bf16 peak reached.

Random weights with the real architecture (`OmniConsistencyModel.load_random`): timings do not
depend on weight values. Plain FLUX runs on the very same transformer, with diffusers' stock
attention (no condition tokens, no warm-up), so the overhead is OmniConsistency's alone.

    python benchmarks/bench_omniconsistency.py                          # CPU, small model
    python benchmarks/bench_omniconsistency.py --device cuda --size full # 1024^2, 25 steps, FLUX.1-dev

FLOPs are counted analytically (matmuls and attention of the transformer; text encoders and
VAE excluded), the model of shared/reference/performance.md: FLUX.1-dev at 1024^2 = 74.4
TFLOP/step; OmniConsistency adds 1024 cached condition keys per step and one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.base import GenerationRequest, ModelOptions
from pipeline.models.flux.packing import pack_latents, unpack_latents
from pipeline.models.omniconsistency.model import OmniConsistencyModel
from pipeline.models.omniconsistency.sampling import euler_step, to_uint8
from pipeline.models.runtime import resolve_dtype

# Dense bf16 tensor-core peaks (datasheet, no sparsity); H200 has the H100 SXM's compute.
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
PRESETS = {  # size -> (width, height, cond_size, steps, images)
    "full": (1024, 1024, 512, 25, 5),
    "small": (512, 512, 256, 4, 2),
    "tiny": (128, 128, 64, 4, 2),
}


@dataclass
class Tokens:
    text: int
    noise: int
    cond: int


def step_flops(config, tokens: Tokens, extra_keys: int) -> float:
    """One transformer forward over text+noise queries; keys = text + noise + extra_keys."""
    d = config.num_attention_heads * config.attention_head_dim
    blocks = config.num_layers + config.num_single_layers
    queries = tokens.text + tokens.noise
    linear = 24 * d * d * queries * blocks  # q,k,v,out + 4x MLP (double) == q,k,v,mlp,out (single)
    linear += (
        2 * config.in_channels * d * tokens.noise * 2
        + 2 * config.joint_attention_dim * d * tokens.text
    )
    attention = 4 * queries * (queries + extra_keys) * d * blocks
    return float(linear + attention)


def warmup_flops(config, tokens: Tokens, rank: int) -> float:
    d = config.num_attention_heads * config.attention_head_dim
    blocks = config.num_layers + config.num_single_layers
    seq = tokens.text + tokens.cond
    lora = 2 * 2 * d * rank * 3 * tokens.cond * blocks
    return float(24 * d * d * seq * blocks + 4 * seq * seq * d * blocks + lora)


def measured_matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    for _ in range(3):
        a @ b
    sync(device)
    repeats = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@torch.inference_mode()
def plain_flux_image(
    model: OmniConsistencyModel,
    prompt: str,
    seed: int,
    width: int,
    height: int,
    steps: int,
    guidance: float = 3.5,
) -> np.ndarray:
    """FLUX.1-dev text-to-image on the same modules (stock attention: no context passed)."""
    sampler = model.sampler
    layout = sampler.layout(width, height, model.settings.cond_size)
    prompt_embeds, pooled = model.text_encoders.encode(prompt)
    noise = sampler.initial_noise(layout, [torch.Generator("cpu").manual_seed(seed)])
    schedule = sampler.schedule(steps, layout)
    latents = pack_latents(noise)
    text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=sampler.device, dtype=sampler.dtype)
    img_ids = layout.noise_ids(sampler.dtype).to(sampler.device)
    guidance_tensor = torch.tensor([guidance], device=sampler.device)
    for i in range(steps):
        timestep = schedule.timesteps[i].expand(1).to(sampler.dtype) / 1000
        velocity = sampler.transformer(
            hidden_states=latents,
            timestep=timestep,
            guidance=guidance_tensor,
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        latents = euler_step(latents, velocity, schedule.sigmas[i], schedule.sigmas[i + 1])
    return to_uint8(sampler.decode(unpack_latents(latents, *layout.latent_hw)))[0]


def timed(device: torch.device, fn) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--size",
        choices=sorted(PRESETS),
        default=None,
        help="random architecture: full (FLUX.1-dev), small, tiny (default: full on cuda)",
    )
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--cond-size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--images", type=int, help="timed images per pipeline (after one untimed warm-up)"
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    size = args.size or ("full" if device.type == "cuda" else "small")
    width, height, cond_size, steps, images = PRESETS[size]
    width, height = args.width or width, args.height or height
    cond_size, steps, images = (
        args.cond_size or cond_size,
        args.steps or steps,
        args.images or images,
    )
    options = ModelOptions(
        device=str(device),
        dtype=args.dtype,
        compile=args.compile,
        fp8=args.fp8,
        extra={"cond_size": cond_size},
    )
    torch.manual_seed(0)
    matmul_peak = measured_matmul_peak(
        device, resolve_dtype(args.dtype, device)
    )  # before anything else runs
    start = time.perf_counter()
    model = OmniConsistencyModel.load_random(options, size=size)
    load_s = time.perf_counter() - start
    sync(device)
    weights_bytes = peak_memory_bytes(device)
    layout = model.sampler.layout(width, height, cond_size)
    tokens = Tokens(model.text_encoders.max_sequence_length, layout.n_noise, layout.n_cond)
    config = model.components.transformer.config
    source = Image.fromarray(
        (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
    )

    def omni(i: int) -> None:
        [outcome] = model.generate(
            [
                GenerationRequest(
                    f"bench{i}",
                    f"a photo, variant {i}",
                    seed=i,
                    subject=source,
                    width=width,
                    height=height,
                    steps=steps,
                )
            ]
        )
        if not outcome.ok:
            raise RuntimeError(outcome.error)

    def flux(i: int) -> None:
        plain_flux_image(model, f"a photo, variant {i}", i, width, height, steps)

    omni(-1), flux(-1)  # untimed: first-call allocations, compilation, kernel selection
    results = {}
    for name, fn in (("flux", flux), ("omniconsistency", omni)):
        reset_peak(device)
        seconds = [timed(device, lambda i=i, fn=fn: fn(i)) for i in range(images)]
        results[name] = {
            "s_per_image": float(np.median(seconds)),
            "min_s": float(min(seconds)),
            "all_s": seconds,
            "peak_memory_gib": peak_memory_bytes(device) / 2**30,
        }

    flux_flops = steps * step_flops(config, tokens, 0)
    omni_flops = steps * step_flops(config, tokens, tokens.cond) + warmup_flops(
        config, tokens, model.components.consistency_lora.rank
    )
    results["flux"]["tflop_per_image"] = flux_flops / 1e12
    results["omniconsistency"]["tflop_per_image"] = omni_flops / 1e12
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    datasheet = next((v for k, v in BF16_PEAK_FLOPS.items() if k in gpu), None)
    for name, flops in (("flux", flux_flops), ("omniconsistency", omni_flops)):
        achieved = flops / results[name]["s_per_image"]
        results[name]["achieved_tflops"] = achieved / 1e12
        results[name]["fraction_of_measured_matmul_peak"] = achieved / matmul_peak
        if datasheet and model.sampler.dtype == torch.bfloat16:
            results[name]["fraction_of_bf16_peak"] = achieved / datasheet
    report = {
        "device": gpu,
        "size": size,
        "dtype": str(model.sampler.dtype),
        "width": width,
        "height": height,
        "cond_size": cond_size,
        "steps": steps,
        "images": images,
        "tokens": vars(tokens),
        "compile": args.compile,
        "fp8": args.fp8,
        "load_s": load_s,
        "weights_memory_gib": weights_bytes / 2**30,
        "measured_matmul_peak_tflops": matmul_peak / 1e12,
        "datasheet_bf16_peak_tflops": datasheet and datasheet / 1e12,
        "time_overhead_vs_flux": results["omniconsistency"]["s_per_image"]
        / results["flux"]["s_per_image"]
        - 1,
        "time_overhead_vs_flux_min": results["omniconsistency"]["min_s"] / results["flux"]["min_s"]
        - 1,
        "flop_overhead_vs_flux": omni_flops / flux_flops - 1,
        "memory_overhead_vs_flux": results["omniconsistency"]["peak_memory_gib"]
        / results["flux"]["peak_memory_gib"]
        - 1,
        "results": results,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
