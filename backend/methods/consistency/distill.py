"""Latent consistency distillation as a job: LCD (full student, w-embedding, EMA target) or LCM-LoRA,
optionally reward-guided (RG-LCD) with a direct expert reward or the latent proxy reward model.

One step (reference/rglcd.md §1–2):
  z = add_noise(x0, ε, t_{n+k});  w ~ U[w_min, w_max]
  teacher (cond, uncond) at t_{n+k} → CFG (LCM form) → DDIM step on the solver grid → x_prev at t_n
  student f_θ(z, w, c, t_{n+k});  target f_θ⁻(x_prev, w, c, t_n) (EMA copy; the LoRA student itself)
  loss = Huber/L2(student, target) − β · reward(decode(student / scaling), prompt)   [or − β · proxy(student)]
The training loop runs on accelerate's Accelerator, reports through JobControl, saves a checkpoint every
``checkpoint_every_s`` and on cancel, and resumes from it; the finished student is written to a temporary
folder and renamed into place.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from backend.core import JobCancelled, JobControl
from backend.metadata import pipeline_info
from backend.methods.conditioning import TextCond, encode, predict
from backend.methods.consistency import lcd
from backend.methods.consistency.config import DistillConfig
from backend.methods.consistency.data import make_data
from backend.methods.consistency.model import base_signature, save_full, save_lora
from backend.methods.consistency.proxy import LatentProxyReward, pair_agreement, preference_kl
from backend.methods.consistency.students import students_for
from backend.models import denoiser, model_defaults

STATE, STATE_JSON = "state.safetensors", "state.json"


class Distiller:
    """Holds teacher, student, target, proxy and optimisers; ``step()`` runs one training step."""

    def __init__(self, pipe: DiffusionPipeline, cfg: DistillConfig, reward=None, guidance: float | None = None):
        if cfg.reward != "none" and reward is None and (cfg.beta > 0 or cfg.proxy):
            from backend.methods.consistency.rewards import load_reward

            reward = load_reward(cfg.reward, next(denoiser(pipe).parameters()).device)
        self.kind = kind = students_for(pipe)
        self.pipe, self.cfg, self.reward = pipe, cfg, reward
        teacher = denoiser(pipe)
        self.device = next(teacher.parameters()).device
        self.accelerator = Accelerator(cpu=self.device.type == "cpu")
        for m in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), teacher):
            if m is not None:
                m.eval().requires_grad_(False)
        self.prediction_type = kind.prediction_type(pipe)
        schedule = kind.noise_schedule(pipe)
        self.schedule = schedule.to(self.device)
        self.solver = lcd.DDIMSolver(schedule, len(schedule.alpha), cfg.num_ddim_timesteps)
        if guidance is None:
            guidance = float(model_defaults(pipe).get("guidance", 7.5))
        w_mid = max(0.0, guidance - 1.0)
        self.w_min = cfg.w_min if cfg.w_min >= 0 else max(0.0, w_mid - 2.0)
        self.w_max = cfg.w_max if cfg.w_max >= 0 else w_mid + 2.0
        if self.w_min > self.w_max:
            raise ValueError(f"w_min {self.w_min} is above w_max {self.w_max}")
        self.teacher_guidance = guidance
        self.data = make_data(pipe, cfg.data, guidance, cfg.seed, cfg.data_pool)
        self.latent_hw = kind.latent_hw(pipe)
        self.uncond = encode(pipe, [""], self.latent_hw)[1]
        self.w_embedding = kind.w_embedding and not cfg.lora  # else one CFG scale, baked into the student
        if cfg.lora:
            self.student = copy.deepcopy(teacher)
            kind.add_lora(self.student, cfg.lora_rank)
            # the teacher: the student with its adapters disabled (U-Net), or the frozen base itself
            self.teacher = None if kind.lora_teacher_is_student else teacher
            self.target = None  # LCM-LoRA: no separate target network
            params = [p for n, p in self.student.named_parameters() if "lora" in n]
            lr = cfg.lr * 10
        else:
            self.student = kind.full_student(teacher, cfg.time_cond_proj_dim)
            self.teacher = teacher
            self.target = copy.deepcopy(self.student).requires_grad_(False).eval()
            params = list(self.student.parameters())
            lr = cfg.lr
        self.student.train()
        self.student.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.base_lr = lr
        self.student_p, self.opt = self.accelerator.prepare(self.student, self.opt)
        self.proxy = self.proxy_opt = None
        if cfg.proxy:
            text_dim = int(self.uncond.hidden.shape[-1])
            torch.manual_seed(cfg.seed)
            self.proxy = LatentProxyReward(int(teacher.config.in_channels), text_dim).to(self.device)
            self.proxy_opt = torch.optim.AdamW(self.proxy.parameters(), lr=cfg.proxy_lr, weight_decay=0.0)
        self.step_count, self.elapsed = 0, 0.0

    # --- one step -------------------------------------------------------------------------------------------------
    def _predict(self, net, z, t, emb: TextCond, w_emb=None):
        """The denoiser's output at training timesteps ``t`` (given the timestep the model expects)."""
        return predict(net, z, self.schedule.model_t[t], emb, w_emb)

    def _teacher(self, z, t, emb: TextCond, w):
        both = TextCond.cat([emb, self.uncond.repeat(len(z)).to(dtype=emb.hidden.dtype)])
        tt = torch.cat([t, t])
        if self.teacher is None:
            self.student.disable_adapters()
            try:
                out = self._predict(self.student, torch.cat([z, z]), tt, both)
            finally:
                self.student.enable_adapters()
        else:
            out = self._predict(self.teacher, torch.cat([z, z]), tt, both)
        x0, eps = lcd.x0_and_eps(out, torch.cat([z, z]), tt, self.schedule, self.prediction_type)
        (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps.chunk(2)
        wb = w.view(-1, 1, 1, 1)
        return x0_c + wb * (x0_c - x0_u), eps_c + wb * (eps_c - eps_u)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor") or 0.0
        img = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
        return (img.float() / 2 + 0.5).clamp(0, 1)

    def forward(self, data_step: int):
        """Student prediction, consistency target, data latents, text embeddings and prompts for one batch."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(1_000_003 * cfg.seed + data_step)
        x0, prompts = self.data.batch(cfg.batch_size, data_step, gen)
        x0 = x0.to(self.device, self.student.dtype)
        b = len(x0)
        emb = encode(self.pipe, prompts, self.latent_hw)[0].to(dtype=self.student.dtype)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        index = torch.randint(0, len(self.solver), (b,), generator=gen)
        t_start, t_end = self.solver.start_and_end(index)
        t_start, t_end = t_start.to(self.device), t_end.to(self.device)
        z = self.schedule.alpha[t_start].view(-1, 1, 1, 1).to(x0) * x0 + \
            self.schedule.sigma[t_start].view(-1, 1, 1, 1).to(x0) * noise
        if self.w_embedding:
            w = self.w_min + (self.w_max - self.w_min) * torch.rand(b, generator=gen)
            w_emb = lcd.guidance_embedding(w, cfg.time_cond_proj_dim).to(self.device, x0.dtype)
        else:
            w = torch.full((b,), (self.w_min + self.w_max) / 2)
            w_emb = None
        w = w.to(self.device, x0.dtype)

        out = self._predict(self.student_p, z, t_start, emb, w_emb)
        pred = lcd.consistency_output(out, z, t_start, self.schedule, self.prediction_type)
        with torch.no_grad():
            x0_t, eps_t = self._teacher(z, t_start, emb, w)
            x_prev = self.solver.ddim_step(x0_t, eps_t, index.to(self.device))
            tnet = self.target if self.target is not None else self.student
            t_out = self._predict(tnet, x_prev, t_end, emb, w_emb)
            target = lcd.consistency_output(t_out, x_prev, t_end, self.schedule, self.prediction_type)
        return pred, target, x0, emb, prompts

    def budget_used(self) -> float:
        """Share of the training budget spent (the larger of steps / max_steps and time / minutes), in [0, 1]."""
        used = [self.step_count / self.cfg.max_steps] if self.cfg.max_steps else []
        used += [self.elapsed / (self.cfg.minutes * 60.0)] if self.cfg.minutes else []
        return min(1.0, max(used, default=0.0))

    @torch.no_grad()
    def eval_loss(self, data_step: int) -> float:
        pred, target, *_ = self.forward(data_step)
        return lcd.distill_loss(pred, target, self.cfg.loss, self.cfg.huber_c).item()

    def step(self, data_step: int | None = None) -> dict:
        cfg, step = self.cfg, self.step_count
        pred, target, x0, emb, prompts = self.forward(step if data_step is None else data_step)
        dloss = lcd.distill_loss(pred, target, cfg.loss, cfg.huber_c)
        loss, info = dloss, {"distill": dloss.item()}
        use_proxy = self.proxy is not None
        if self.reward is not None and cfg.beta > 0 and not use_proxy:
            r = self.reward(self.decode(pred), prompts)
            loss = loss - cfg.beta * r.mean()
            info["reward"] = r.mean().item()
        elif use_proxy and cfg.beta > 0 and step >= cfg.proxy_warmup:
            self.proxy.requires_grad_(False)
            r = self.proxy(pred, emb.hidden)
            self.proxy.requires_grad_(True)
            loss = loss - cfg.beta * r.mean()
            info["proxy_reward"] = r.mean().item()
        lr_scale = min(1.0, (step + 1) / 20) * (1.0 - self.budget_used() if cfg.lr_decay else 1.0)
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * lr_scale
        self.opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        if self.target is not None:
            with torch.no_grad():
                for pt, ps in zip(self.target.parameters(), self.student.parameters(), strict=True):
                    pt.lerp_(ps.detach(), 1 - cfg.ema_decay)
        if use_proxy:
            info.update(self._proxy_step(pred.detach(), target, x0, emb, prompts))
        info["loss"] = loss.item()
        self.step_count += 1
        return info

    def _proxy_step(self, pred, target, real, emb, prompts) -> dict:
        k = min(self.cfg.proxy_batch, len(pred))
        trip = torch.stack([pred[:k], target[:k], real[:k]], 1)  # k × 3 × C × H × W
        flat = trip.flatten(0, 1)
        emb3 = emb.hidden[:k].repeat_interleave(3, 0)
        with torch.no_grad():
            expert = self.reward(self.decode(flat), [p for p in prompts[:k] for _ in range(3)]).view(k, 3)
        scores = self.proxy(flat, emb3).view(k, 3)
        kl = preference_kl(scores, expert)
        self.proxy_opt.zero_grad(set_to_none=True)
        kl.backward()
        torch.nn.utils.clip_grad_norm_(self.proxy.parameters(), 1.0)
        self.proxy_opt.step()
        return {"proxy_kl": kl.item(), "proxy_agree": pair_agreement(scores.detach(), expert),
                "reward": float(expert[:, 0].mean())}

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def save_state(self, work: Path, cfg_dict: dict) -> None:
        work.mkdir(parents=True, exist_ok=True)
        tensors = {f"student.{k}": v for k, v in _trainable_state(self.student, self.cfg.lora).items()}
        if self.target is not None:
            tensors.update({f"target.{k}": v for k, v in self.target.state_dict().items()})
        tensors.update(_flat_opt("opt", self.opt))
        meta = {"step": self.step_count, "elapsed": self.elapsed, "config": cfg_dict,
                "opt_groups": _opt_groups(self.opt)}
        if self.proxy is not None:
            tensors.update({f"proxy.{k}": v for k, v in self.proxy.state_dict().items()})
            tensors.update(_flat_opt("popt", self.proxy_opt))
            meta["popt_groups"] = _opt_groups(self.proxy_opt)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        tmp = work / f".state-tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file(tensors, tmp / STATE)
            (tmp / STATE_JSON).write_text(json.dumps(meta))
            os.replace(tmp, work / f"state-{self.step_count:09d}-{time.time_ns()}")  # the one atomic step
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        newest = latest_state(work)
        for old in work.iterdir():  # older states and temporaries of a killed save
            if old.is_dir() and old.name.startswith(("state-", ".state-tmp-")) and old != newest:
                shutil.rmtree(old, ignore_errors=True)

    def load_state(self, state: Path) -> None:
        meta = read_state_meta(state)
        try:
            tensors = load_file(state / STATE)
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"training checkpoint {str(state / STATE)!r} is truncated or corrupted ({exc}); "
                             f"delete {str(state.parent)!r} to start over") from None

        def part(prefix):
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

        try:
            self.student.load_state_dict(part("student"), strict=not self.cfg.lora)
            if self.target is not None:
                self.target.load_state_dict(part("target"))
            _load_opt(self.opt, part("opt"), meta["opt_groups"])
            if self.proxy is not None and "popt_groups" in meta:
                self.proxy.load_state_dict(part("proxy"))
                _load_opt(self.proxy_opt, part("popt"), meta["popt_groups"])
            self.step_count, self.elapsed = int(meta["step"]), float(meta["elapsed"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"training checkpoint {str(state)!r} does not fit this model ({first}); delete "
                             f"{str(state.parent)!r} to start over") from None


def latest_state(work: Path) -> Path | None:
    """The newest complete training state in ``work`` (``state-STEP-TIME/``, each renamed into place whole)."""
    states = sorted(p for p in work.glob("state-*") if p.is_dir()) if work.is_dir() else []
    return states[-1] if states else None


def read_state_meta(state: Path) -> dict:
    """state.json of a training state; ValueError naming the file when it is unreadable."""
    path = state / STATE_JSON
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError("not a training state")
        return meta
    except (OSError, ValueError) as exc:
        raise ValueError(f"training checkpoint {str(path)!r} is unreadable ({exc}); delete {str(state.parent)!r} "
                         "to start over") from None


def _trainable_state(unet, lora: bool) -> dict:
    sd = unet.state_dict()
    return {k: v for k, v in sd.items() if "lora" in k} if lora else sd


def _flat_opt(prefix: str, opt) -> dict:
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            out[f"{prefix}.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return out


def _opt_groups(opt) -> list:
    return [{k: v for k, v in g.items()} for g in opt.state_dict()["param_groups"]]


def _load_opt(opt, flat: dict, groups: list) -> None:
    state: dict = {}
    for key, val in flat.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": groups})


def work_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def distill(pipe: DiffusionPipeline, cfg: DistillConfig, out: str | Path, job: JobControl | None = None,
            reward=None, work: str | Path | None = None, guidance: float | None = None) -> dict:
    """Train a consistency student for ``cfg.minutes`` (or ``cfg.max_steps``) and write it to ``out``.

    Checkpoints go to ``work`` (default ``OUT.partial``) and a rerun with the same arguments resumes from
    them. Returns a summary: status ("done" or "cancelled"), steps, train_minutes, last losses, out.
    """
    out = Path(out)
    work = Path(work) if work is not None else work_dir_for(out)
    if out.exists():
        raise ValueError(f"out: {str(out)!r} already exists; give a new folder")
    job = job or JobControl()
    d = Distiller(pipe, cfg, reward, guidance)
    cfg_dict = cfg.to_dict()
    state = latest_state(work)
    if state is not None:
        meta = read_state_meta(state)
        saved = meta["config"]
        changed = sorted(k for k in cfg_dict if k not in ("minutes", "max_steps", "checkpoint_every_s")
                         and saved.get(k) != cfg_dict[k])
        if changed:
            raise ValueError(f"{work}: a checkpoint with other settings exists ({changed[0]}: {saved.get(changed[0])!r}"
                             f" there, {cfg_dict[changed[0]]!r} now); delete it or use the same settings")
        d.load_state(state)
    budget = cfg.minutes * 60.0
    total = cfg.max_steps or None
    t0, prev_elapsed, last_save = time.monotonic(), d.elapsed, time.monotonic()
    log, info, status = [], {}, "done"
    try:
        while True:
            d.elapsed = prev_elapsed + time.monotonic() - t0
            if (cfg.max_steps and d.step_count >= cfg.max_steps) or (budget and d.elapsed >= budget) \
                    or (not cfg.max_steps and not budget) or job.out_of_time():
                break
            job.check()
            info = d.step()
            log.append({"step": d.step_count, **{k: round(v, 6) for k, v in info.items()}})
            eta = max(0.0, budget - d.elapsed) if budget else None
            job.report(step=d.step_count, total=total, minutes=round(d.elapsed / 60, 2),
                       **({"eta_s": round(eta, 1)} if eta is not None and not total else {}),
                       **{k: round(v, 5) for k, v in info.items()})
            if time.monotonic() - last_save >= cfg.checkpoint_every_s:
                d.save_state(work, cfg_dict)
                last_save = time.monotonic()
    except JobCancelled:
        status = "cancelled"
    d.elapsed = prev_elapsed + time.monotonic() - t0
    d.save_state(work, cfg_dict)
    _append_log(work, log)
    summary = {"status": status, "steps": d.step_count, "train_minutes": round(d.elapsed / 60, 2),
               "kind": "lora" if cfg.lora else "full", "out": str(out), "data": d.data.describe,
               **{k: round(v, 5) for k, v in info.items()}}
    if status == "cancelled":
        summary["resume"] = f"run again with the same settings and out to resume from {work}"
        return summary
    meta = {
        "kind": summary["kind"], "base_model": pipeline_info(pipe).source or "?",
        "base_signature": base_signature(denoiser(pipe)),
        "original_inference_steps": cfg.num_ddim_timesteps, "max_steps": cfg.num_ddim_timesteps,
        "guidance": round((d.w_min + d.w_max) / 2 + 1.0, 4), "w_range": [d.w_min, d.w_max],
        "teacher_guidance": d.teacher_guidance, "reward": cfg.reward if cfg.beta > 0 else "none",
        "beta": cfg.beta, "proxy": cfg.proxy, "steps": d.step_count, "train_minutes": summary["train_minutes"],
        "data": d.data.describe,
        "config": cfg_dict,
    }
    if not d.w_embedding:
        meta["guidance"] = 1.0  # guidance is baked into an LCM-LoRA (and a student without a w-input): no CFG
    tmp = work / "export"
    if tmp.exists():
        shutil.rmtree(tmp)
    student = d.accelerator.unwrap_model(d.student_p)
    student.eval()
    if cfg.lora:
        save_lora(pipe, student, tmp, meta, cfg.lora_rank)
    else:
        save_full(pipe, student, tmp, meta)
    if (work / "train_log.jsonl").is_file():
        shutil.copy(work / "train_log.jsonl", tmp / "train_log.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _append_log(work: Path, rows: list[dict]) -> None:
    with (work / "train_log.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
