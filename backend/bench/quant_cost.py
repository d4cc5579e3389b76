"""``bench quant --cost``: what one training iteration costs, EfficientDM (QALoRA rank r + TALSQ) vs full QAT.

Both students are built by :func:`backend.methods.quant.train.build_student` from the same FP U-Net (their
frozen tensors shared with it, so memory holds one FP copy) at the same bits, batch and resolution, and take
the training step of :func:`backend.methods.quant.train.finetune`: the FP teacher's and the student's CFG noise
predictions on one x_t, MSE, backward, gradient clip, AdamW step. Activation ranges are not calibrated (the cost
of a step does not depend on them). Timing is the protocol of :func:`backend.metrics.cost.timed_rounds`: the
two methods' steps in interleaved rounds, with the per-round ratio QAT / EfficientDM as the iteration-cost ratio.
When the two students do not fit in memory together (SD 1.5's U-Net on a 24 GiB CPU machine), each is built,
measured and freed in turn, and the ratio's interval is that of two independent samples (``timing_mode``).
"""

from __future__ import annotations

import argparse
import copy
import gc
from collections.abc import Callable

import torch
import torch.nn.functional as F

from backend.metadata import pipeline_info
from backend.metrics.paired import ratio_interval

REPRODUCES = ("the per-iteration part of the paper's 16.2x: trainable parameters, optimizer state, peak memory "
              "and seconds per iteration at the same batch and resolution")
NOT_REPRODUCED = ("the iterations each method needs to reach quality on LDM-4 ImageNet (QAT 54.5 GPU-h vs "
                  "EfficientDM's 16k iterations): that needs LDM-4's weights and ImageNet; 16.2x = per-iteration "
                  "ratio x ratio of iterations to quality")
# fp32 copies of the U-Net's parameters each student needs beside the loaded FP U-Net (the teacher): kept
# between steps (EfficientDM's frozen W0; QAT's latent weights, gradients and two Adam moments) and held during
# a step until its backward pass (the weight fake quantizer keeps its input and its output: EfficientDM's merged
# W0 + BA and Ŵ; QAT's Ŵ)
METHODS = ("efficientdm", "qat")
KEPT = {"efficientdm": 1, "qat": 4}
IN_STEP = {"efficientdm": 2, "qat": 1}


def shared_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``unet`` whose parameters and buffers are the original tensors (modules are new)."""
    return copy.deepcopy(unet, {id(t): t for t in [*unet.parameters(), *unet.buffers()]})


def available_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0] / 2**20
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 1024


def plan_memory(unet: torch.nn.Module, model: str, device: str, free_mb: float | None = None) -> str:
    """"interleaved" when both students fit in the memory free on ``device`` at once (the timing protocol's
    interleaved rounds), "sequential" when only one at a time does; ValueError (one line) when neither fits.
    Weight copies only (KEPT, IN_STEP): activations come on top (measured on sd15-arch at 256², batch 1:
    EfficientDM 13.2 GiB = 4.0 weight copies, QAT 15.4 GiB = 4.7), hence the 10% margin."""
    weights = sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**20
    free = available_mb(device) if free_mb is None else free_mb
    both = (sum(KEPT.values()) + max(IN_STEP.values())) * weights
    one = max(KEPT[m] + IN_STEP[m] for m in KEPT) * weights
    if both <= 0.9 * free:
        return "interleaved"
    if one <= 0.9 * free:
        return "sequential"
    raise ValueError(f"--cost on {model!r} needs about {one / 1024:.1f} GiB free on {device} (QAT's latent weights, "
                     f"gradients and Adam state and a step's fake-quantized weights), {free / 1024:.1f} GiB are; "
                     "allowed: a smaller --model (shapes, tiny-arch) or a machine with more memory (CUDA is used "
                     "when present)")


def defaults(pipe, device: str) -> tuple[int, int]:
    """(batch, resolution): the paper's batch 2 on CUDA, 1 on the CPU; the model's default image size."""
    from backend.models import model_defaults

    size = model_defaults(pipe).get("height") or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return (2 if device.startswith("cuda") else 1), int(size)


def optimizer_state_mb(opt: torch.optim.Optimizer) -> float:
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if torch.is_tensor(v)) / 2**20


def measure_cost(pipe, weight_bits: int = 4, act_bits: int = 4, lora_rank: int = 32, batch: int = 1,
                 resolution: int | None = None, repeats: int = 3, model: str = "",
                 timing_mode: str | None = None, release_encoders: bool = False) -> list[dict]:
    """Rows for EfficientDM and QAT (trainable_params, optimizer_state_mb, peak_mem_mb, s_per_iter with its
    interval) and their comparison (iter_cost_ratio = QAT time / EfficientDM time, with interval).
    ``timing_mode``: interleaved or sequential (default: what :func:`plan_memory` finds fits).
    ``release_encoders``: drop ``pipe``'s text encoder(s) and VAE once the prompts are encoded (a pipeline
    loaded for this measurement only: 0.8 GiB more for the students on SD 1.5)."""
    from backend.methods.quant import FinetuneConfig
    from backend.methods.quant.calibrate import cfg_eps, ddim_scheduler, default_prompts, encode, guidance_of
    from backend.methods.quant.model import quantize_unet
    from backend.methods.quant.train import build_student, param_groups
    from backend.metrics import cost

    unet = pipe.unet
    device = str(next(unet.parameters()).device)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--cost-batch {batch!r} is out of range; allowed: a whole number ≥ 1")
    size = defaults(pipe, device)[1] if resolution is None else resolution
    if size < 8 * pipe.vae_scale_factor or size % pipe.vae_scale_factor:
        raise ValueError(f"--resolution {size} is not allowed; allowed: a multiple of {pipe.vae_scale_factor}, "
                         f"at least {8 * pipe.vae_scale_factor}")
    quantize_unet(shared_copy(unet), FinetuneConfig().quant_config())  # a model with no quantizable layer: ValueError
    if timing_mode not in (None, "interleaved", "sequential"):
        raise ValueError(f"timing_mode {timing_mode!r} is not allowed; allowed: interleaved, sequential")
    prompts = default_prompts(pipe, batch)
    with torch.no_grad():
        cond, uncond = encode(pipe, prompts)
    guidance = guidance_of(pipe)
    if release_encoders:
        for name in ("text_encoder", "text_encoder_2", "vae"):
            if getattr(pipe, name, None) is not None:
                setattr(pipe, name, None)
        cost.release_freed_memory()
    mode = timing_mode or plan_memory(unet, model, device)
    gen = torch.Generator("cpu").manual_seed(0)
    latent = size // pipe.vae_scale_factor
    x = torch.randn(batch, unet.config.in_channels, latent, latent, generator=gen).to(device)

    def build(method: str) -> tuple[Callable[[], None], torch.optim.Optimizer, int]:
        ft = FinetuneConfig.from_dict({"method": method, "weight_bits": weight_bits, "act_bits": act_bits,
                                       "lora_rank": lora_rank, "batch_size": batch})
        # EfficientDM's W0 stays frozen, so it may share the teacher's tensors; QAT trains (and so marks as
        # needing gradients, and updates) its FP weights: it gets its own copy, or EfficientDM's timed steps would
        # also compute those weight gradients and the teacher would drift
        own = shared_copy(unet) if method == "efficientdm" else copy.deepcopy(unet)
        student, state = build_student(pipe, ft, calibrate_acts=False, student=own)
        student.train()
        opt = torch.optim.AdamW(param_groups(state, ft), weight_decay=0.0)
        params = [p for g in opt.param_groups for p in g["params"]]
        t = int(ddim_scheduler(pipe, ft.train_steps).timesteps[ft.train_steps // 2])

        def step() -> None:
            opt.zero_grad(set_to_none=True)  # as finetune does: the old gradients are freed before the forward pass
            with torch.no_grad():
                e_t = cfg_eps(unet, x, t, cond, uncond, guidance)
            loss = F.mse_loss(cfg_eps(student, x, t, cond, uncond, guidance), e_t)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, ft.grad_clip)
            opt.step()

        return step, opt, sum(p.numel() for p in params)

    def build_and_step(method: str) -> tuple[Callable[[], None], dict]:
        """The method's training step, and its row so far: trainable_params, opt, and peak_mem_mb = the memory
        that building the student (its own weight copies) and its first step (gradients, optimizer state,
        activations) took, above what was in use before (the FP teacher)."""
        made: dict = {}

        def build_then_step() -> None:
            made["step"], made["opt"], made["trainable_params"] = build(method)
            made["step"]()

        made["peak_mem_mb"] = cost.peak_memory_mb(build_then_step, device)
        return made.pop("step"), made

    rows: dict[str, dict] = {}
    if mode == "interleaved":
        steps = {}
        for method in METHODS:
            steps[method], rows[method] = build_and_step(method)
        timing = cost.timed_rounds(steps, repeats=repeats, warmup=0, device=device, baseline="qat")
        ratio, ratio_ci = timing["efficientdm"]["speedup"], timing["efficientdm"]["speedup_ci"]
        how = (f"{repeats} interleaved rounds of one training step each, after building each student and its "
               "first step (which measured peak memory); ratio = QAT / EfficientDM per round (median, 95% interval)")
    else:  # one student at a time: built, measured, freed before the next
        timing = {}
        for method in METHODS:
            step, rows[method] = build_and_step(method)
            timing[method] = cost.timed_rounds({method: step}, repeats=repeats, warmup=0, device=device,
                                               keep_times=True)[method]
            rows[method]["optimizer_state_mb"] = optimizer_state_mb(rows[method].pop("opt"))
            del step
            gc.collect()
        ratio, ratio_ci = ratio_interval(timing["qat"].pop("times_s"), timing["efficientdm"].pop("times_s"))
        how = (f"{repeats} training steps of each method in sequence (the two students do not fit in the memory "
               f"free on {device} together), after building each student and its first step (which measured peak "
               "memory); ratio = median QAT "
               "step / median EfficientDM step, 95% interval by Welch's t on log times (independent samples)")
    common = {"model": f"{model or pipeline_info(pipe).source} (cost)", "bits": f"W{weight_bits}A{act_bits}",
              "batch": batch, "resolution": size, "device": device, "timing_mode": mode}
    out = []
    for method in METHODS:
        row, t = rows[method], timing[method]
        if "opt" in row:
            row["optimizer_state_mb"] = optimizer_state_mb(row.pop("opt"))
        out.append({**common, "method": method, "lora_rank": lora_rank if method == "efficientdm" else 0,
                    "trainable_params": row["trainable_params"], "optimizer_state_mb": row["optimizer_state_mb"],
                    "peak_mem_mb": row["peak_mem_mb"], "s_per_iter": t["latency_s"], "s_per_iter_ci": t["latency_ci"],
                    "repeats": t["repeats"]})
    e, q = out
    out.append({**common, "method": "efficientdm_vs_qat", "iter_cost_ratio": ratio, "iter_cost_ratio_ci": ratio_ci,
                "timing_noisy": cost.noisy(ratio, ratio_ci),
                "trainable_params_ratio": q["trainable_params"] / e["trainable_params"],
                "optimizer_state_ratio": q["optimizer_state_mb"] / max(e["optimizer_state_mb"], 1e-9),
                "peak_mem_ratio": q["peak_mem_mb"] / max(e["peak_mem_mb"], 1e-9),
                "timing": how, "reproduces": REPRODUCES, "not_reproduced": NOT_REPRODUCED})
    return out


def run(args: argparse.Namespace) -> list[dict]:
    from backend.bench.quant_bits import parse_bits
    from backend.models import load_pipeline

    model = args.model or "sd15-arch"
    for flag, value in (("--resolution", args.resolution), ("--cost-batch", args.cost_batch)):
        if value is not None and value < 1:  # refused before the model loads (0 is not "the default")
            raise ValueError(f"{flag} {value} is out of range; allowed: a whole number ≥ 1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(model, device=device)
    batch, _ = defaults(pipe, device)
    _, w, a = parse_bits(args.bits)[-1]
    batch = batch if args.cost_batch is None else args.cost_batch
    return measure_cost(pipe, w, a, args.lora_rank, batch, args.resolution, args.repeats, model,
                        release_encoders=True)
