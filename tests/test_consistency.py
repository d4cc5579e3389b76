"""RG-LCD mechanism on tiny-arch: boundary scalings, the DDIM solver grid, distillation, reward gradient, proxy."""

import pytest
import torch

from backend.methods.consistency import DistillConfig, lcd
from backend.methods.consistency.distill import Distiller
from backend.methods.consistency.proxy import LatentProxyReward, pair_agreement, preference_kl
from backend.methods.consistency.rewards import FunctionReward


def brightness_reward():
    return FunctionReward("brightness", lambda images, prompts: images.mean(dim=(1, 2, 3)))


def small_cfg(**kw):
    base = {"batch_size": 4, "minutes": 0, "max_steps": 3, "num_ddim_timesteps": 50, "seed": 0, "data_pool": 0}
    return DistillConfig.from_dict({**base, **kw})


def test_boundary_scalings():
    c_skip, c_out = lcd.boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[1] < 1e-5 and c_out[1] > 0.999
    z = torch.randn(2, 4, 8, 8)
    f = lcd.consistency_output(torch.randn_like(z), z, torch.tensor([0, 0]), torch.linspace(0.99, 0.01, 1000),
                               "epsilon")
    assert torch.allclose(f, z)  # f(z, 0) = z: the boundary condition


def test_ddim_solver_grid():
    alphas = torch.linspace(0.999, 0.01, 1000)
    solver = lcd.DDIMSolver(alphas, 1000, 50)
    assert solver.k == 20 and len(solver) == 50
    assert solver.timesteps[:3].tolist() == [19, 39, 59] and solver.timesteps[-1] == 999
    start, end = solver.start_and_end(torch.tensor([0, 1, 49]))
    assert start.tolist() == [19, 39, 999] and end.tolist() == [0, 19, 979]
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    out = solver.ddim_step(x0, eps, torch.tensor([0, 1, 49]))
    a = torch.stack([alphas[0], alphas[19], alphas[979]]).view(3, 1, 1, 1)
    assert torch.allclose(out, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        lcd.DDIMSolver(alphas, 1000, 1)


def test_guidance_embedding_matches_the_lcm_pipeline():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([1.0, 6.5])
    ours = lcd.guidance_embedding(w, 32)
    theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, 32)
    assert torch.allclose(ours, theirs, atol=1e-3)


def test_distillation_steps_lower_the_loss(tiny_pipe):
    d = Distiller(tiny_pipe, small_cfg(loss="l2", lr=3e-3, ema_decay=0.0))
    before = d.eval_loss(data_step=7)
    for _ in range(8):
        info = d.step(data_step=7)
    after = d.eval_loss(data_step=7)
    assert info["loss"] == pytest.approx(info["distill"])
    assert after < before
    # the student has a w-embedding; the teacher does not and stays untouched
    assert d.student.config.time_cond_proj_dim == 256 and tiny_pipe.unet.config.time_cond_proj_dim is None
    assert not any(p.requires_grad for p in tiny_pipe.unet.parameters())


def test_lr_decays_linearly_over_the_budget(tiny_pipe):
    d = Distiller(tiny_pipe, small_cfg(lr=1e-3, lr_decay=True, max_steps=40))
    lrs = []
    for _ in range(3):
        d.step(data_step=0)
        lrs.append(d.opt.param_groups[0]["lr"])
    d.step_count = 30  # three quarters of max_steps spent: a quarter of the (warmed-up) lr is left
    d.step(data_step=0)
    assert lrs == pytest.approx([1e-3 * k / 20 * (1 - (k - 1) / 40) for k in (1, 2, 3)])
    assert d.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


def test_lora_variant_trains_only_adapters(tiny_pipe):
    d = Distiller(tiny_pipe, small_cfg(lora=True, lr=1e-3))
    assert d.target is None and all("lora" in n for n, p in d.student.named_parameters() if p.requires_grad)
    base = {n: p.clone() for n, p in d.student.named_parameters() if "lora" not in n}
    d.step()
    d.step()
    assert all(torch.equal(p, base[n]) for n, p in d.student.named_parameters() if "lora" not in n)


def test_reward_gradient_reaches_student_through_vae_decoder(tiny_pipe):
    d = Distiller(tiny_pipe, small_cfg(reward="shapes", beta=1.0), reward=brightness_reward())
    pred, *_ , prompts = d.forward(0)
    images = d.decode(pred)
    assert images.requires_grad and images.min() >= 0 and images.max() <= 1
    (-d.reward(images, prompts).mean()).backward()
    grads = [p.grad for p in d.student.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in tiny_pipe.vae.parameters())  # frozen decoder, gradient passes through
    info = d.step()
    assert "reward" in info and info["loss"] == pytest.approx(info["distill"] - info["reward"], abs=1e-5)


def test_proxy_learns_expert_preferences():
    torch.manual_seed(0)
    proxy = LatentProxyReward(latent_channels=4, text_dim=16, width=32)
    opt = torch.optim.AdamW(proxy.parameters(), lr=3e-3)
    lat = torch.randn(48, 4, 8, 8)
    text = torch.randn(16, 5, 16).repeat_interleave(3, 0)
    expert = (lat[:, 0].mean((1, 2)) * 20).view(16, 3)  # the expert likes a bright channel 0
    first = None
    for _ in range(60):
        kl = preference_kl(proxy(lat, text).view(16, 3), expert)
        first = first if first is not None else kl.item()
        opt.zero_grad()
        kl.backward()
        opt.step()
    assert kl.item() < 0.5 * first
    assert pair_agreement(proxy(lat, text).view(16, 3), expert) > 0.9


def test_proxy_distillation_step(tiny_pipe):
    d = Distiller(tiny_pipe, small_cfg(reward="shapes", beta=0.5, proxy=True, proxy_warmup=1),
                  reward=brightness_reward())
    first = d.step()
    assert "proxy_kl" in first and "proxy_reward" not in first  # warm-up: the proxy trains first
    second = d.step()
    assert "proxy_reward" in second and 0 <= second["proxy_agree"] <= 1


def test_shapes_hard_mix_and_bad_mix(tiny_pipe):
    from backend.methods.consistency.data import make_data
    from backend.world.prompts import parse_caption
    from backend.world.shapes import HELD_OUT_PAIRS

    data = make_data(tiny_pipe, "shapes:hard", guidance=5.0, seed=0, pool=0)
    lat, caps = data.batch(8, 0, torch.Generator().manual_seed(0))
    assert lat.shape[0] == 8 and "hard mix" in data.describe
    scenes = [parse_caption(c) for c in caps]
    held = [any((o.shape, o.color) in HELD_OUT_PAIRS for o in sc.objects) for sc in scenes]
    assert all(len(sc.objects) == 2 and not h for sc, h in zip(scenes[::2], held[::2]))  # two-object, train split
    assert all(held[1::2])  # compositional half: a held-out (shape, colour) pair in each scene
    with pytest.raises(ValueError, match="shapes:hard"):
        make_data(tiny_pipe, "shapes:nope", guidance=5.0)
