"""PTQ calibration on the full-precision model's own sampling trajectory (data-free), and its helpers.

Weights: per-channel min/max (set when a layer is wrapped). Activations: the FP model samples a few
prompts with DDIM (a transformer: with its pipeline's own scheduler, its calls replayed as they were made); its
U-Net inputs (x_t, t, text) along the way are kept, ``calib_samples`` of them are replayed through the U-Net
with quantization off while every activation quantizer records its inputs, and each range is then chosen by the
MSE-style search of :meth:`ActQuantizer.calibrate`.
"""

from __future__ import annotations

import random

import torch
from diffusers import DDIMScheduler

from backend.methods.conditioning import TextCond
from backend.methods.conditioning import encode as encode_text
from backend.methods.quant.config import QuantConfig
from backend.methods.quant.model import QuantState


def default_prompts(pipe, n: int, seed: int = 0) -> list[str]:
    """n prompts the model knows: Shapes-world captions (train split) or the built-in general captions."""
    from backend.captions import general_captions
    from backend.models import has_shapes_judge

    rng = random.Random(seed)
    if has_shapes_judge(pipe):
        from backend.world.shapes import random_scene

        return [random_scene(rng, None, "train").caption for _ in range(n)]
    return [rng.choice(general_captions()) for _ in range(n)]


def guidance_of(pipe, guidance: float | None = None) -> float:
    from backend.models import model_defaults

    if guidance is not None and guidance >= 0:
        return float(guidance)
    return float(model_defaults(pipe).get("guidance", 7.5))


def encode(pipe, prompts: list[str]) -> tuple[TextCond, TextCond]:
    """(conditional, unconditional) U-Net conditioning of the prompts at the calibration latent size."""
    return encode_text(pipe, prompts, latent_shape(pipe, 1)[2:])


def latent_shape(pipe, n: int) -> tuple[int, ...]:
    """Latents at the model's default image size (speedlab.json), else the U-Net's native sample size."""
    from backend.models import model_defaults

    defaults, native = model_defaults(pipe), pipe.unet.config.sample_size
    h, w = (defaults[k] // pipe.vae_scale_factor if defaults.get(k) else native for k in ("height", "width"))
    return (n, pipe.unet.config.in_channels, h, w)


def ddim_scheduler(pipe, steps: int) -> DDIMScheduler:
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    return sched


def branch_eps(unet, x: torch.Tensor, t, cond: TextCond, uncond: TextCond) -> tuple[torch.Tensor, torch.Tensor]:
    """(e_u, e_c): the unconditional and conditional noise predictions, in one batched U-Net call."""
    out = unet(torch.cat([x, x]), t, **TextCond.cat([uncond, cond]).unet_kwargs()).sample
    e_u, e_c = out.chunk(2)
    return e_u, e_c


def cfg_eps(unet, x: torch.Tensor, t, cond: TextCond, uncond: TextCond, guidance: float) -> torch.Tensor:
    """Classifier-free-guided noise prediction; cond and uncond in one batched U-Net call (one timestep)."""
    e_u, e_c = branch_eps(unet, x, t, cond, uncond)
    return e_u + guidance * (e_c - e_u)


@torch.no_grad()
def collect_unet_inputs(pipe, prompts: list[str], steps: int, guidance: float, seed: int = 0, unet=None):
    """The model's DDIM trajectory (eta 0): a list of (x_t, t, cond, uncond), one entry per step."""
    unet = unet if unet is not None else pipe.unet
    cond, uncond = encode(pipe, prompts)
    sched = ddim_scheduler(pipe, steps)
    gen = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn(latent_shape(pipe, len(prompts)), generator=gen).to(pipe.unet.device, pipe.unet.dtype)
    x = x * sched.init_noise_sigma
    out = []
    for t in sched.timesteps:
        out.append((x.clone(), int(t), cond, uncond))
        eps = cfg_eps(unet, sched.scale_model_input(x, t), t, cond, uncond, guidance)
        x = sched.step(eps, t, x).prev_sample
    return out


@torch.no_grad()
def collect_pipeline_calls(pipe, net, prompts: list[str], steps: int, guidance: float, seed: int = 0) -> list:
    """(args, kwargs) of every call the pipeline makes to ``net`` (its denoiser) while sampling the prompts with its
    own scheduler: the calibration inputs of a transformer, whatever its family's conditioning and sampler."""
    from backend.models import denoiser, set_denoiser
    from backend.seeded import seeded_images

    calls: list = []
    handle = net.register_forward_pre_hook(lambda m, a, k: calls.append((a, dict(k))), with_kwargs=True)
    base = denoiser(pipe)
    set_denoiser(pipe, net)
    try:
        seeded_images(pipe, prompts, [seed + i for i in range(len(prompts))], steps, guidance)
    finally:
        handle.remove()
        set_denoiser(pipe, base)
    return calls


@torch.no_grad()
def calibrate(pipe, state: QuantState, config: QuantConfig | None = None, unet=None,
              prompts: list[str] | None = None) -> None:
    """Set every activation range of the quantized U-Net (``unet`` or ``pipe.unet``) from the FP trajectory.

    The trajectory is sampled by the same U-Net with quantization switched off, i.e. the FP model.
    """
    from backend.models import denoiser

    config = config or state.config
    unet = unet if unet is not None else denoiser(pipe)
    prompts = prompts or default_prompts(pipe, config.calib_prompts, config.seed)
    guidance = guidance_of(pipe)
    was_training = unet.training
    unet.eval()
    state.set_quantize(False)
    try:
        if getattr(pipe, "transformer", None) is not None:  # a DiT: the pipeline's own transformer calls, replayed
            calls = collect_pipeline_calls(pipe, unet, prompts, config.calib_steps, guidance, config.seed)
        else:  # a U-Net: ``calib_samples`` (step, row) pairs of the trajectory, replayed per step (one timestep each)
            calls = _unet_calls(collect_unet_inputs(pipe, prompts, config.calib_steps, guidance, config.seed,
                                                    unet=unet), len(prompts), config)
        quantizers = state.act_quantizers()
        for q in quantizers.values():
            q.observe(True)
        for args, kwargs in calls:
            unet(*args, **kwargs)
        for q in quantizers.values():
            q.calibrate_observed()
    finally:
        for q in state.act_quantizers().values():
            q.observed = None
        state.set_quantize(True)
        unet.train(was_training)


def _unet_calls(traj: list, n_prompts: int, config: QuantConfig) -> list:
    """(args, kwargs) of the CFG-batched U-Net calls on ``calib_samples`` (step, row) pairs drawn from ``traj``."""
    rng = random.Random(config.seed + 1)
    pairs = [(i, r) for i in range(len(traj)) for r in range(n_prompts)]
    by_step: dict[int, list[int]] = {}
    for i, r in sorted(rng.sample(pairs, min(config.calib_samples, len(pairs)))):
        by_step.setdefault(i, []).append(r)
    calls = []
    for i, rows in by_step.items():
        x, t, cond, uncond = traj[i]
        idx = torch.tensor(rows)
        calls.append(((torch.cat([x[idx], x[idx]]), t), TextCond.cat([uncond[idx], cond[idx]]).unet_kwargs()))
    return calls
