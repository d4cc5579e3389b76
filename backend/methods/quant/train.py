"""EfficientDM fine-tuning (QALoRA + TALSQ + data-free distillation) and the full-QAT baseline, as a job.

The FP teacher samples DDIM trajectories (``train_steps`` steps, eta 1, CFG) for prompts of the model's
prompt set; at every step teacher and student see the same x_t, the loss is the MSE between their
guided noise predictions, one optimizer step follows, and x_{t-1} comes from the *teacher's* prediction.
A transformer (DiT) teacher's trajectory is sampled by its own pipeline and scheduler; the student sees each of
its transformer calls (both CFG rows) and the loss is the MSE against the teacher's output on that call.

- efficientdm: every target-bit layer gets a rank-r LoRA merged into W0 (its dequantized PTQ weight)
  before fake quantization; one Adam group per layer with lr = lora_lr_scale × mean weight step size
  (scale-aware); LSQ weight step sizes and the per-step activation step sizes / zero points learn too.
- qat: the latent FP weights of the same layers learn directly (LSQ on all weights, no LoRA).

Runs on accelerate's ``Accelerator`` (``accelerate launch -m backend finetune efficientdm ...`` uses
several GPUs); progress, cancel and the time budget go through :class:`backend.core.JobControl`;
checkpoints are written every ``checkpoint_every_s`` and on cancel, and a run resumes from its ``out``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backend.core import JobCancelled, JobControl
from backend.metadata import pipeline_info
from backend.methods.quant.calibrate import (
    calibrate,
    collect_pipeline_calls,
    ddim_scheduler,
    default_prompts,
    encode,
    guidance_of,
    latent_shape,
)
from backend.methods.quant.checkpoint import (
    CONFIG_FILE,
    TRAIN_FILE,
    CheckpointError,
    load_train_state,
    read_meta,
    require_same_base,
    save_checkpoint,
)
from backend.methods.quant.config import LAYER_POLICY_KEYS, FinetuneConfig, QuantConfig
from backend.methods.quant.distill import distill_loss
from backend.methods.quant.model import QuantState, layer_role, quantize_unet
from backend.models import call_timestep, denoiser, is_dit

RESUME_KEYS = ("method", "weight_bits", "act_bits", "train_steps", "batch_size", "lora_rank", "seed",
               "train_first_last")
FIRST_LAST_ROLES = ("first_last", "time_embed")


def trains(name: str, ft: FinetuneConfig) -> bool:
    """Whether a fine-tune trains the target-bit layer, or the layer input quantizer, ``name``: all of them, less
    conv_in / conv_out / the time embedding when ``ft.train_first_last`` is off."""
    return ft.train_first_last or layer_role(name.removesuffix(".a_quant")) not in FIRST_LAST_ROLES


def _trajectory_timesteps(pipe, steps: int) -> list[int]:
    """The timesteps of the teacher's trajectories: DDIM's on a U-Net; on a DiT, those its pipeline calls the
    transformer at (its own scheduler, with any shift the pipeline sets, e.g. Flux's resolution-dependent mu)."""
    if not is_dit(pipe):
        return [int(t) for t in ddim_scheduler(pipe, steps).timesteps]
    net = denoiser(pipe)
    calls = collect_pipeline_calls(pipe, net, [""], steps, guidance_of(pipe))
    return [round(float(torch.as_tensor(call_timestep(net, a, k)).reshape(-1)[0])) for a, k in calls]


def _dit_trajectory(pipe, teacher, prompts: list[str], steps: int, guidance: float, seed: int):
    """A DiT teacher's trajectory as the calls its pipeline makes (CFG batched, its own scheduler), each with the
    teacher's output: [(args, kwargs, output)]."""
    from torch.utils._pytree import tree_map

    # the pipeline runs under inference_mode: clones of its inputs are normal tensors, which autograd may save
    # (a student whose first layer quantizes its input with a learned step size needs that input for backward)
    calls = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x,
                     collect_pipeline_calls(pipe, teacher, prompts, steps, guidance, seed))
    return [(a, k, teacher(*a, **k)[0]) for a, k in calls]


def build_student(pipe, ft: FinetuneConfig, prompts: list[str] | None = None, calibrate_acts: bool = True,
                  quant: QuantConfig | None = None, student: torch.nn.Module | None = None):
    """A quantized copy of ``pipe.unet`` ready for fine-tuning (PTQ-initialised); (student, state).

    ``quant`` overrides the layer policy / calibration settings (its bits are replaced by ft's); ``student``:
    the FP module to quantize in place instead of a deep copy of ``pipe.unet``.
    """
    student = student if student is not None else copy.deepcopy(denoiser(pipe))
    base = quant or ft.quant_config()
    qcfg = dataclasses.replace(base, method=ft.method, weight_bits=ft.weight_bits, act_bits=ft.act_bits,
                               checkpoint="")
    state = quantize_unet(student, qcfg, base_model=pipeline_info(pipe).source)
    if calibrate_acts:
        calibrate(pipe, state, qcfg, unet=student, prompts=(prompts or [])[: qcfg.calib_prompts] or None)
    state.set_timesteps(_trajectory_timesteps(pipe, ft.train_steps))
    student.requires_grad_(False)
    for name, layer in state.trainable_layers().items():
        if not trains(name, ft):
            continue
        if ft.method == "efficientdm":
            layer.add_lora(ft.lora_rank)
        else:
            layer.base_layer.weight.requires_grad_(True)
        layer.w_quant.scale.requires_grad_(True)
    for name, q in state.act_quantizers(temporal_only=True).items():
        if trains(name, ft):
            q.scale.requires_grad_(True)
            q.zero_point.requires_grad_(True)
    return student, state


def param_groups(state: QuantState, ft: FinetuneConfig) -> list[dict]:
    """Adam groups: scale-aware LoRA lr per layer (or the QAT weight lr), weight scales, and per quantizer the
    activation step-size table (lr relative to its mean step size) and zero points (lr in integer codes)."""
    groups = []
    layers = {name: layer for name, layer in state.trainable_layers().items() if trains(name, ft)}
    for name, layer in layers.items():
        if ft.method == "efficientdm":
            lr = ft.lora_lr_scale * float(layer.w_quant.scale.detach().mean())
            groups.append({"params": [layer.lora_A, layer.lora_B], "lr": lr, "name": f"lora:{name}"})
    if ft.method == "qat":
        groups.append({"params": [m.base_layer.weight for m in layers.values()], "lr": ft.qat_lr, "name": "weights"})
    groups.append({"params": [m.w_quant.scale for m in layers.values()], "lr": ft.weight_scale_lr,
                   "name": "weight_scales"})
    quantizers = {name: q for name, q in state.act_quantizers(temporal_only=True).items() if trains(name, ft)}
    for name, q in quantizers.items():  # scale-aware: relative to the step size
        groups.append({"params": [q.scale], "lr": ft.act_lr * float(q.scale.detach().abs().mean()),
                       "name": f"act_scale:{name}"})
        groups.append({"params": [q.zero_point], "lr": ft.act_lr, "name": f"act_zero:{name}"})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def _train_tensors(state: QuantState, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in state.layers.items():
        out.update({f"layer.{name}.{key}": value for key, value in layer.trainable_state().items()})
    for name, proc in state.attn.items():
        for key, value in proc.state_dict().items():
            out[f"attn.{name}.{key}"] = value.detach().clone()
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        for key, value in st.items():
            if torch.is_tensor(value):
                out[f"opt.{i}.{key}"] = value.detach().clone()
    return out


def _restore(state: QuantState, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups_meta) -> None:
    with torch.no_grad():
        for name, layer in state.layers.items():
            prefix = f"layer.{name}."
            try:
                layer.load_trainable_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            except ValueError as exc:
                raise CheckpointError(f"the saved layer {name!r} does not match this fine-tune ({exc})") from None
        for name, proc in state.attn.items():
            for key, value in proc.state_dict().items():
                value.copy_(tensors[f"attn.{name}.{key}"])
    params = [p for g in opt.param_groups for p in g["params"]]
    per: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            per.setdefault(int(i), {})[k] = value
    if len(groups_meta) != len(opt.param_groups):
        raise CheckpointError("the saved optimizer does not match this fine-tune (different layers)")
    for g, saved in zip(opt.param_groups, groups_meta, strict=True):
        g["lr"], g["initial_lr"] = saved["lr"], saved["initial_lr"]
    for i, st in per.items():
        if i >= len(params):
            raise CheckpointError("the saved optimizer does not match this fine-tune (different parameters)")
        opt.state[params[i]] = {k: v if k == "step" else v.to(params[i].device) for k, v in st.items()}
    state.invalidate()


def _refuse_changes(out: Path, saved: dict, now, keys: tuple[str, ...]) -> None:
    """CheckpointError naming the first of ``keys`` whose value in ``now`` differs from the checkpoint's."""
    defaults = type(now)()  # a key that an older checkpoint lacks had its default then
    for key in keys:
        was = saved.get(key, getattr(defaults, key))
        if was != getattr(now, key):
            raise CheckpointError(f"{out}: cannot resume, {key} was {was!r} and is now "
                                  f"{getattr(now, key)!r}; allowed: the same settings, or a new --out")


def progress_bar(ft: FinetuneConfig, desc: str, disable: bool = False):
    """A stderr tqdm bar of a fine-tune (iterations under ``max_iters``, else training seconds of its budget) and the
    ``JobControl.on_progress`` callback that moves it: (bar, callback); close the bar when the fine-tune ends."""
    from tqdm import tqdm

    total = ft.max_iters or None
    bar = tqdm(total=total or int(ft.minutes * 60), unit="it" if total else "s", desc=desc, file=sys.stderr,
               disable=disable)

    def on_progress(fields: dict) -> None:
        bar.n = fields["step"] if total else min(bar.total, int(fields.get("train_s", 0)))
        bar.set_postfix({"step": fields["step"], "loss": fields["loss"]}, refresh=False)
        bar.refresh()

    return bar, on_progress


def finetune(
    pipe, ft: FinetuneConfig, out: str | Path, job: JobControl | None = None, prompts: list[str] | None = None,
    resume: bool = True, on_eval: Callable[[torch.nn.Module, float, int], bool] | None = None,
    eval_every_s: float | None = None, quant: QuantConfig | None = None,
) -> dict:
    """Fine-tune a quantized student of ``pipe`` (FP teacher) into the checkpoint directory ``out``.

    Returns a summary (status done/cancelled/stopped, iters, elapsed_s, loss, out). ``on_eval(student,
    train_seconds, iters)`` is called every ``eval_every_s`` seconds of training (its own time is not
    counted) and may return True to stop early. ``quant`` sets the student's layer policy and PTQ
    calibration (default: QuantConfig defaults at ft's bits).
    """
    from accelerate import Accelerator

    job = job or JobControl()
    out = Path(out)
    teacher = denoiser(pipe)
    accelerator = Accelerator(cpu=next(teacher.parameters()).device.type == "cpu")
    teacher.eval().requires_grad_(False)
    pool = list(prompts) if prompts else default_prompts(pipe, 256, ft.seed)
    if not pool or any(not isinstance(p, str) or not p.strip() for p in pool):
        raise ValueError("prompts: give one or more non-empty text prompts")
    resuming = resume and (out / CONFIG_FILE).exists() and (out / TRAIN_FILE).exists()
    meta = None
    if resuming:
        require_same_base(read_meta(out), teacher, f"{out}: cannot resume, the checkpoint",
                          pipeline_info(pipe).source)
        meta, tensors = load_train_state(out)
        _refuse_changes(out, meta["training"]["finetune"], ft, RESUME_KEYS)
        from backend.methods.quant.checkpoint import config_from_meta

        saved_quant = config_from_meta(meta, out)
        if quant is not None:
            _refuse_changes(out, dataclasses.asdict(saved_quant), quant, LAYER_POLICY_KEYS)
        quant = saved_quant
    student, state = build_student(pipe, ft, pool, calibrate_acts=not resuming, quant=quant)
    opt = torch.optim.AdamW(param_groups(state, ft), weight_decay=0.0)
    it, traj, elapsed, loss_avg = 0, 0, 0.0, None
    if resuming:
        _restore(state, opt, tensors, meta["training"]["param_groups"])
        tr = meta["training"]
        it, traj, elapsed, loss_avg = tr["iters"], tr["trajectories"], tr["elapsed_s"], tr.get("loss")
    student.train()
    student, opt = accelerator.prepare(student, opt)
    device = accelerator.device
    teacher.to(device)
    guidance = guidance_of(pipe, ft.guidance)
    dit = is_dit(pipe)
    sched = None if dit else ddim_scheduler(pipe, ft.train_steps)
    timesteps = state.index.timesteps if dit else sched.timesteps
    budget = ft.minutes * 60.0
    params = [p for g in opt.param_groups for p in g["params"]]
    uncond = None
    if not dit:
        with torch.no_grad():
            uncond = encode(pipe, [""])[1]
    last_ckpt, last_eval, status = elapsed, elapsed, "done"

    def save(done: bool) -> None:
        if not accelerator.is_main_process:
            return
        unwrapped = accelerator.unwrap_model(student)
        was = unwrapped.training
        unwrapped.eval()
        groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        training = {"finetune": ft.to_dict(), "iters": it, "trajectories": traj, "elapsed_s": round(elapsed, 3),
                    "loss": loss_avg, "done": done, "param_groups": groups}
        save_checkpoint(unwrapped, out, training=training, train_tensors=_train_tensors(state, opt))
        unwrapped.train(was)

    def finished() -> bool:
        return (elapsed >= budget or (ft.max_iters and it >= ft.max_iters) or job.out_of_time())

    try:
        while not finished():
            gen = torch.Generator("cpu").manual_seed(ft.seed * 1_000_003 + traj * 1009 + accelerator.process_index)
            idx = torch.randint(0, len(pool), (ft.batch_size,), generator=gen).tolist()
            if dit:  # the pipeline samples the trajectory; the student matches every teacher call (both CFG rows)
                with torch.no_grad():
                    calls = _dit_trajectory(pipe, teacher, [pool[i] for i in idx], ft.train_steps, guidance,
                                            ft.seed + traj)
            else:
                with torch.no_grad():
                    cond = encode(pipe, [pool[i] for i in idx])[0].to(device)
                unc = uncond.repeat(len(idx)).to(device)
                x = (torch.randn(latent_shape(pipe, len(idx)), generator=gen) * sched.init_noise_sigma).to(device)
            for step, t in enumerate(timesteps):
                job.check()
                start = time.monotonic()
                frac = max(elapsed / budget if budget > 0 else 1.0, it / ft.max_iters if ft.max_iters else 0.0)
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * max(0.0, 1.0 - frac)
                opt.zero_grad(set_to_none=True)  # before the forward pass: the old gradients are not held beside it
                if dit:
                    args, kwargs, target = calls[min(step, len(calls) - 1)]
                    loss = torch.nn.functional.mse_loss(student(*args, **kwargs)[0], target)
                else:
                    loss, e_t = distill_loss(teacher, student, x, t, cond, unc, guidance, ft.distill_target)
                accelerator.backward(loss)
                if ft.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, ft.grad_clip)
                opt.step()
                if not dit:
                    x = sched.step(e_t, t, x, eta=ft.eta, generator=gen).prev_sample
                it += 1
                value = float(loss.detach())
                loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
                elapsed += time.monotonic() - start
                fields = {"step": it, "total": ft.max_iters or None, "loss": round(loss_avg, 6),
                          "train_s": round(elapsed, 1), "minutes": round(elapsed / 60, 3)}
                if not ft.max_iters:  # time-budgeted: the ETA is the training time left
                    fields["eta_s"] = round(max(0.0, budget - elapsed), 1)
                job.report(**fields)
                if finished():
                    break
            traj += 1
            if elapsed - last_ckpt >= ft.checkpoint_every_s and not finished():
                save(done=False)
                last_ckpt = elapsed
            if on_eval is not None and eval_every_s and elapsed - last_eval >= eval_every_s:
                last_eval = elapsed
                unwrapped = accelerator.unwrap_model(student)
                unwrapped.eval()
                stop = on_eval(unwrapped, elapsed, it)
                unwrapped.train()
                if stop:
                    status = "stopped"
                    break
    except JobCancelled:
        status = "cancelled"
    save(done=status != "cancelled")
    accelerator.unwrap_model(student).eval()
    return {"status": status, "iters": it, "trajectories": traj, "elapsed_s": round(elapsed, 2),
            "loss": None if loss_avg is None else round(loss_avg, 6), "out": str(out),
            "minutes": round(elapsed / 60, 3), "final_loss_is_finite": loss_avg is None or math.isfinite(loss_avg),
            "student": accelerator.unwrap_model(student)}
