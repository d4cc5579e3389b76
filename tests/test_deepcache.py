"""DeepCache: exactness, which modules run, schedules, per-call state, CFG branches, schedulers, bad input, cost."""

import contextlib
import copy
import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.hooks.hooks import CacheContext, _set_cache_context

from backend.metadata import DEEPCACHE_HOOK
from backend.methods.deepcache import (
    DeepCacheConfig,
    apply,
    apply_deepcache,
    cached_tensors,
    deepcache_call,
    get_hook,
    nonuniform_full_steps,
    plan_branch,
    remove,
    remove_deepcache,
    uniform_full_steps,
    valid_branches,
)
from backend.methods.deepcache.cost import example_inputs, schedule_counts, theoretical_speedup, unet_macs
from backend.methods.deepcache.partial import capture, partial_forward


@pytest.fixture
def pipe(tiny_pipe):
    """The tiny pipeline with a private U-Net (load_pipeline shares modules across pipelines in a process)."""
    tiny_pipe.unet = copy.deepcopy(tiny_pipe.unet)
    return tiny_pipe


def _images(pipe, prompt="a red circle", steps=8, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return torch.from_numpy(pipe(prompt, num_inference_steps=steps, generator=gen, output_type="np", **kw).images)


def _tiny_unet2d() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
    ).eval()


def _ddpm_pipe() -> DDPMPipeline:
    pipe = DDPMPipeline(unet=_tiny_unet2d(), scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------ exactness

def test_interval_one_is_bit_identical(pipe):
    base = _images(pipe)
    hook = apply(pipe, DeepCacheConfig(interval=1))
    assert torch.equal(_images(pipe), base)
    assert hook.stats()["full"] == 8 and hook.stats()["partial"] == 0


def test_apply_twice_equals_once_and_remove_restores(pipe):
    unet, cls = pipe.unet, type(pipe)
    base = _images(pipe)
    apply(pipe, {"interval": 3, "branch": 1})
    assert type(pipe).__name__ == cls.__name__ and isinstance(pipe, cls)
    once = _images(pipe)
    apply(pipe, {"interval": 3, "branch": 1})
    apply(pipe, {"interval": 3, "branch": 1})
    assert list(unet._diffusers_hook.hooks) == [DEEPCACHE_HOOK]
    assert torch.equal(_images(pipe), once)
    assert not torch.equal(once, base)
    remove(pipe)
    remove(pipe)  # no-op
    assert "forward" not in unet.__dict__ and not hasattr(unet, "_diffusers_hook")
    assert unet.forward.__func__ is UNet2DConditionModel.forward
    assert get_hook(pipe) is None and type(pipe) is cls
    assert torch.equal(_images(pipe), base)


def test_remove_deepcache_restores_a_bare_unet(pipe):
    unet = pipe.unet
    kw = example_inputs(unet, batch=2)
    later = dict(kw, timestep=torch.tensor(400))
    with torch.inference_mode():
        base = unet(**later).sample
        apply_deepcache(unet, DeepCacheConfig(interval=3))
        with deepcache_call(unet):
            unet(**kw)
            partial = unet(**later).sample  # from the feature cached at timestep 500
        remove_deepcache(unet)
        remove_deepcache(unet)  # no-op
        again = unet(**later).sample
    assert not torch.equal(partial, base)
    assert "forward" not in unet.__dict__ and not hasattr(unet, "_diffusers_hook")
    assert unet.forward.__func__ is UNet2DConditionModel.forward
    assert torch.equal(again, base)


def _partial_matches_full(unet, branch, kwargs):
    plan = plan_branch(unet, branch)
    box = []
    with torch.inference_mode(), capture(unet, plan, box):
        full = unet(**kwargs).sample
    import inspect

    bound = inspect.signature(unet.forward).bind(**kwargs)
    bound.apply_defaults()
    with torch.inference_mode():
        part = partial_forward(unet, plan, dict(bound.arguments), box[-1]).sample
    return torch.equal(full, part)


def test_partial_step_reproduces_the_original_at_the_same_inputs(pipe):
    # With the cache taken from the same inputs, a partial evaluation must compute exactly what the
    # original forward computes: same modules, same arguments, bit for bit.
    unet = pipe.unet
    assert valid_branches(unet) == list(range(12))
    torch.manual_seed(1)
    kwargs = example_inputs(unet, batch=2)
    kwargs["timestep"] = torch.tensor(321)
    for branch in valid_branches(unet):
        assert _partial_matches_full(unet, branch, kwargs), branch
    odd = example_inputs(unet, batch=1, latent_height=12, latent_width=20)  # forwards upsample sizes
    assert _partial_matches_full(unet, 4, odd)
    u2d = _tiny_unet2d()
    assert valid_branches(u2d) == list(range(9))
    kw2 = example_inputs(u2d, batch=2)
    for branch in valid_branches(u2d):
        assert _partial_matches_full(u2d, branch, kw2), branch


def _unit(name: str) -> str:
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 4:
        return ".".join(parts[:4])
    return parts[0]


def _units_run(unet, call) -> set[str]:
    seen, handles = set(), []
    for name, module in unet.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: seen.add(_unit(n))))
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("branch, extra", [
    (0, set()),
    (1, {"down_blocks.0.resnets.0", "down_blocks.0.attentions.0", "up_blocks.3.resnets.1",
         "up_blocks.3.attentions.1"}),
])
def test_partial_step_runs_only_the_branch(pipe, branch, extra):
    unet = pipe.unet
    apply_deepcache(unet, DeepCacheConfig(interval=3, branch=branch))
    kw = example_inputs(unet, batch=2)
    with torch.inference_mode(), deepcache_call(unet) as hook:
        full = _units_run(unet, lambda: unet(**kw))
        partial = _units_run(unet, lambda: unet(**kw))
    assert hook.stats()["patterns"] == ["Fp"]
    assert "mid_block" in full and "down_blocks.3.resnets.1" in full
    base = {"time_proj", "time_embedding", "conv_in", "up_blocks.3.resnets.2", "up_blocks.3.attentions.2",
            "conv_norm_out", "conv_act", "conv_out"}
    assert partial == base | extra


# ------------------------------------------------------------------------------------------------ schedules

def test_schedules_match_the_paper():
    assert nonuniform_full_steps(50, 5, 15, 1.4) == [0, 5, 9, 13, 17, 21, 26, 31, 37, 43]
    assert nonuniform_full_steps(50, 3, 15, 1.3) == [0, 3, 6, 8, 11, 13, 15, 17, 20, 23, 26, 29, 32, 35, 39, 42, 46]
    assert nonuniform_full_steps(250, 20, 120, 1.4) == [0, 22, 42, 61, 80, 98, 115, 131, 149, 168, 187, 207, 228]
    assert uniform_full_steps(50, 3) == list(range(0, 50, 3))
    with pytest.raises(ValueError, match="cannot place 10 full steps"):
        nonuniform_full_steps(10, 1, 15, 1.4)


def test_schedule_inside_a_call_and_img2img(pipe):
    hook = apply(pipe, {"interval": 5, "schedule": "nonuniform", "center": 6, "power": 1.4})
    _images(pipe, steps=20)
    assert hook.stats()["patterns"] == ["".join("F" if i in (0, 5, 8, 13) else "p" for i in range(20))]
    apply(pipe, {"interval": 3})
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    init = torch.rand(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="outside a denoising call"):  # the U-Net's hook, not this pipeline's
        img2img("a red circle", image=init, strength=0.5, num_inference_steps=10, output_type="np")
    apply(img2img, {"interval": 3})
    with torch.inference_mode():
        img2img("a red circle", image=init, strength=0.5, num_inference_steps=10, output_type="np")
    assert get_hook(pipe).stats()["patterns"] == ["FppFp"]  # counted from the call's first evaluation
    apply(pipe, {"schedule": [0, 2, 3]})
    _images(pipe, steps=6)
    assert get_hook(pipe).stats()["patterns"] == ["FpFFpp"]


# ------------------------------------------------------------------------------------------------ state

def test_state_is_reset_between_calls(pipe):
    apply(pipe, {"interval": 3, "branch": 0})
    second_alone = _images(pipe, "a blue square", steps=7, seed=5)
    _images(pipe, "a red circle", steps=10, seed=1)
    assert get_hook(pipe).stats()["patterns"] == ["FppFppFppF"]
    second_after = _images(pipe, "a blue square", steps=7, seed=5)
    assert get_hook(pipe).stats()["patterns"] == ["FppFppF"]
    assert torch.equal(second_after, second_alone)  # nothing leaks from the previous call


def test_batch_size_change_between_calls(pipe):
    apply(pipe, {"interval": 2})
    _images(pipe, steps=6)
    two = _images(pipe, steps=6, num_images_per_prompt=2)
    assert two.shape[0] == 2 and torch.isfinite(two).all()
    assert get_hook(pipe).stats()["patterns"] == ["FpFpFp"]


@contextlib.contextmanager
def _cache_context(unet, name):
    """What diffusers' CacheMixin.cache_context(name) does on cache-aware models (the U-Net has no such method)."""
    if name is None:
        yield
        return
    _set_cache_context(unet, CacheContext(name))
    try:
        yield
    finally:
        _set_cache_context(unet, None)


def _cfg_loop(unet, sched, two_calls: bool, names=(None, None), steps: int | None = 8):
    """A hand-written CFG loop in one DeepCache call; ``steps=None`` keeps the scheduler's timesteps as they are."""
    g = torch.Generator().manual_seed(3)
    uncond = torch.randn(1, 16, 16, generator=g)
    cond = torch.randn(1, 16, 16, generator=g)
    lat = torch.randn(1, 4, 8, 8, generator=g)
    if steps is not None:
        sched.set_timesteps(steps)
    with torch.inference_mode(), deepcache_call(unet, sched) as hook:
        for t in sched.timesteps:
            if two_calls:
                with _cache_context(unet, names[0]):
                    eps_u = unet(lat, t, encoder_hidden_states=uncond).sample
                with _cache_context(unet, names[1]):
                    eps_c = unet(lat, t, encoder_hidden_states=cond).sample
            else:
                both = unet(torch.cat([lat, lat]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                eps_u, eps_c = both.chunk(2)
            lat = sched.step(eps_u + 5.0 * (eps_c - eps_u), t, lat).prev_sample
    return lat, hook.stats()


def test_cfg_batched_and_as_two_calls_agree(pipe):
    unet, sched = pipe.unet, pipe.scheduler
    apply_deepcache(unet, DeepCacheConfig(interval=3, branch=0))
    batched, s1 = _cfg_loop(unet, sched, two_calls=False)
    split, s2 = _cfg_loop(unet, sched, two_calls=True)
    assert s1["branches"] == 1 and s1["patterns"] == ["FppFppFp"]
    assert s2["branches"] == 2 and s2["patterns"] == ["FppFppFp"] * 2
    assert torch.allclose(batched, split, atol=1e-4)
    named, s3 = _cfg_loop(unet, sched, two_calls=True, names=("uncond", "cond"))  # diffusers' CacheContext
    assert s3["patterns"] == ["FppFppFp"] * 2 and torch.equal(named, split)
    shared, s4 = _cfg_loop(unet, sched, two_calls=True, names=("shared", "shared"))  # the official helper's bug
    assert s4["patterns"] == ["FppFppFppFppFppF"]
    assert (shared - batched).abs().max() > 100 * (split - batched).abs().max()


def test_cache_holds_one_tensor_per_cfg_branch(pipe):
    apply(pipe, {"interval": 3, "branch": 0})
    _images(pipe, steps=4)  # batched CFG: one tensor [2, 8, 8, 8] (up_blocks[-1] input channels)
    stats = get_hook(pipe).stats()
    assert stats["branches"] == 1 and stats["cache_bytes"] == 2 * 8 * 8 * 8 * 4
    _, split = _cfg_loop(pipe.unet, pipe.scheduler, two_calls=True, steps=4)
    assert split["branches"] == 2 and split["cache_bytes"] == 2 * 8 * 8 * 8 * 4


# ------------------------------------------------------------------------------------------------ bare U-Net, calls

def _sd_loop(unet, pipe, prompt: str, steps: int, seed: int, guidance: float = 5.0) -> torch.Tensor:
    """StableDiffusionPipeline's denoising loop written out by hand around a bare U-Net: its final latents."""
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    with torch.inference_mode():
        cond, uncond = pipe.encode_prompt(prompt, torch.device("cpu"), 1, True)
        embeds = torch.cat([uncond, cond])
        lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
        sched.set_timesteps(steps)
        with deepcache_call(unet, sched):
            for t in sched.timesteps:
                x = sched.scale_model_input(torch.cat([lat, lat]), t)
                eps_u, eps_c = unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0].chunk(2)
                lat = sched.step(eps_u + guidance * (eps_c - eps_u), t, lat, return_dict=False)[0]
    return lat


@pytest.mark.parametrize("section, pattern", [
    ({"interval": 3, "branch": 1}, "FppFppFp"),
    ({"interval": 3, "schedule": "nonuniform", "center": 2, "power": 1.4}, None),
])
def test_bare_unet_in_a_hand_written_loop_matches_the_pipeline(pipe, section, pattern):
    config = DeepCacheConfig.from_dict(section)
    unet = copy.deepcopy(pipe.unet)
    apply_deepcache(unet, config)
    apply(pipe, config)
    with torch.inference_mode():
        via_pipe = pipe("a red circle", num_inference_steps=8, guidance_scale=5.0, output_type="latent",
                        generator=torch.Generator().manual_seed(4)).images
    by_hand = _sd_loop(unet, pipe, "a red circle", steps=8, seed=4)
    assert torch.equal(by_hand, via_pipe)
    patterns = get_hook(unet).stats()["patterns"]
    assert patterns == get_hook(pipe).stats()["patterns"] and "p" in patterns[0]
    assert pattern is None or patterns == [pattern]
    remove(pipe)
    with torch.inference_mode():
        base = pipe("a red circle", num_inference_steps=8, guidance_scale=5.0, output_type="latent",
                    generator=torch.Generator().manual_seed(4)).images
    assert not torch.equal(base, by_hand)  # the partial evaluations ran


def test_the_cache_is_freed_when_a_call_ends(pipe):
    apply(pipe, {"interval": 3})
    held = []

    def watch(p, i, t, kwargs):
        held.append(cached_tensors(p.unet))
        return kwargs

    _images(pipe, steps=4, callback_on_step_end=watch)
    assert held == [2] * 4  # during the call: the cached feature and the conditioning it belongs to
    assert cached_tensors(pipe.unet) == 0 and get_hook(pipe).cache_bytes() == 0
    assert get_hook(pipe).stats()["cache_bytes"] == 2 * 8 * 8 * 8 * 4  # what it held at most

    def cancel(p, i, t, kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a call that raises frees the cache too, and the next call runs
        _images(pipe, steps=4, callback_on_step_end=cancel)
    assert cached_tensors(pipe.unet) == 0
    _images(pipe, steps=4)

    unet, sched = pipe.unet, pipe.scheduler
    sched.set_timesteps(4)
    kw = example_inputs(unet, batch=2)
    with torch.inference_mode(), deepcache_call(unet, sched):
        unet(**kw)
        assert cached_tensors(unet) == 2
    assert cached_tensors(unet) == 0


def test_each_call_of_a_custom_loop_starts_a_fresh_schedule(pipe):
    # the scheduler's timesteps are set once and reused: the second call must still start at evaluation 0
    unet, sched = pipe.unet, pipe.scheduler
    apply_deepcache(unet, DeepCacheConfig(interval=3))
    sched.set_timesteps(7)
    first, s1 = _cfg_loop(unet, sched, two_calls=False, steps=None)
    second, s2 = _cfg_loop(unet, sched, two_calls=False, steps=None)
    assert s1["patterns"] == s2["patterns"] == ["FppFppF"]
    assert torch.equal(first, second)


def test_call_boundaries_are_required(pipe):
    unet = pipe.unet
    kw = example_inputs(unet, batch=1)
    with pytest.raises(ValueError, match="no DeepCache hook"):
        with deepcache_call(unet):
            pass
    apply_deepcache(unet, DeepCacheConfig(interval=3))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside a denoising call"):
        unet(**kw)
    with deepcache_call(unet), pytest.raises(RuntimeError, match="already running"):
        with deepcache_call(unet):
            pass
    apply_deepcache(unet, DeepCacheConfig(interval=3, schedule="nonuniform"))
    with torch.inference_mode(), deepcache_call(unet), pytest.raises(ValueError, match="number of U-Net evaluations"):
        unet(**kw)


def test_unsupported_diffusers_version(pipe, monkeypatch):
    import diffusers

    cls = type(pipe)
    monkeypatch.setattr(diffusers, "__version__", "0.41.2")
    with pytest.raises(ValueError, match=r"diffusers 0\.41\.2 is not supported .* allowed: diffusers 0\.42\.x"):
        apply_deepcache(pipe.unet, DeepCacheConfig())
    with pytest.raises(ValueError, match="diffusers 0.41.2"):
        apply(pipe, {"interval": 3})
    assert get_hook(pipe) is None and type(pipe) is cls


def test_sd15_cache_memory_at_512_with_cfg():
    # measured through the capture path on a meta-device SD 1.5 U-Net: one [2, 320, 64, 64] fp32 tensor
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    assert valid_branches(unet) == list(range(12))
    macs = unet_macs(unet, 0, batch=2)
    assert macs["cache_bytes"] == 2 * 320 * 64 * 64 * 4 <= 12e6
    assert macs["full"] / 2 == pytest.approx(401.6e9, rel=1e-3)  # the reference's SD 1.5 count, attention included
    assert macs["partial"] / macs["full"] == pytest.approx(0.0787, abs=1e-3)


# ------------------------------------------------------------------------------------------------ schedulers

@pytest.mark.parametrize("cls, extra, steps, evals", [
    (DDIMScheduler, {}, 6, 6), (PNDMScheduler, {"skip_prk_steps": True}, 6, 7), (PNDMScheduler, {}, 4, 13),
    (DPMSolverMultistepScheduler, {}, 6, 6), (EulerDiscreteScheduler, {}, 6, 6), (LCMScheduler, {}, 4, 4),
    (HeunDiscreteScheduler, {}, 5, 9),
])
def test_schedulers(pipe, cls, extra, steps, evals):
    # the interval counts U-Net evaluations: PLMS makes one extra, PRK runs Runge-Kutta sub-steps, Heun two per step
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    apply(pipe, {"interval": 3})
    out = _images(pipe, steps=steps)
    assert torch.isfinite(out).all()
    assert len(pipe.scheduler.timesteps) == evals
    assert get_hook(pipe).stats()["patterns"] == ["".join("F" if i % 3 == 0 else "p" for i in range(evals))]


def test_unet2dmodel_pipeline():
    pipe = _ddpm_pipe()

    def run():
        with torch.inference_mode():
            return pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0),
                        output_type="np").images

    base = run()
    apply(pipe, {"interval": 1, "branch": 4})
    assert (run() == base).all()
    hook = apply(pipe, {"interval": 3, "branch": 4})
    out = run()
    assert hook.stats()["patterns"] == ["FppFpp"] and not (out == base).all()
    with pytest.raises(ValueError, match="allowed: 0 to 8"):
        apply(pipe, {"branch": 9})


# ------------------------------------------------------------------------------------------------ variant, cost

def test_variant_section_builds_and_generates():
    from backend.models import load_pipeline
    from backend.runs.build import build_pipeline
    from backend.sampling import generate
    from backend.variant import Variant

    v = Variant.from_dict({"model": "tiny-arch", "steps": 6, "deepcache": {"interval": 3, "branch": 0,
                                                                            "schedule": "uniform"}})
    pipe = build_pipeline(v)
    images = generate(pipe, v, ["a red circle"], [0])
    assert images.shape == (1, 32, 32, 3)
    assert get_hook(pipe).stats()["patterns"] == ["FppFpp"]
    assert get_hook(load_pipeline("tiny-arch")) is None  # the shared base U-Net stays untouched


def test_cost_accounting(pipe):
    unet = pipe.unet
    macs = unet_macs(unet, 0, batch=2)
    assert 0 < macs["partial"] < macs["full"]
    from backend.metrics.cost import mac_counter

    with torch.inference_mode(), mac_counter() as real:  # counting on fake tensors == counting a real run
        unet(**example_inputs(unet, batch=2))
    assert macs["full"] == real.get_total_flops() // 2
    cfg = DeepCacheConfig(interval=3)
    assert schedule_counts(cfg, 50) == {"full": 17, "partial": 33, "evals": 50}
    expected = 50 * macs["full"] / (17 * macs["full"] + 33 * macs["partial"])
    assert math.isclose(theoretical_speedup(cfg, 50, macs), expected)
    assert theoretical_speedup(DeepCacheConfig(interval=1), 50, macs) == 1.0


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input(pipe):
    with pytest.raises(ValueError, match="interval"):
        DeepCacheConfig.from_dict({"interval": 0})
    with pytest.raises(ValueError, match="schedule"):
        DeepCacheConfig.from_dict({"schedule": "cosine"})
    with pytest.raises(ValueError, match="start with 0"):
        DeepCacheConfig.from_dict({"schedule": [2, 4]})
    with pytest.raises(ValueError, match="power"):
        DeepCacheConfig.from_dict({"schedule": "nonuniform", "power": 1.0})
    assert DeepCacheConfig.from_dict({"schedule": [0, 4]}).full_steps == [0, 4]
    with pytest.raises(ValueError, match=r"deepcache.branch: 12 is out of range .* allowed: 0 to 11"):
        apply(pipe, {"branch": 12})
    assert get_hook(pipe) is None
    apply(pipe, {"interval": 1, "schedule": "nonuniform"})
    with pytest.raises(ValueError, match="cannot place 4 full steps"):
        _images(pipe, steps=4)

    class DiTPipe:
        transformer = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="transformer"):
        apply(DiTPipe(), {"interval": 3})
    from backend.variant import Variant, VariantError

    with pytest.raises(VariantError, match="deepcache.interval"):
        Variant.from_dict({"model": "tiny-arch", "deepcache": {"interval": 0}})


# ------------------------------------------------------------------------------------------------ shapes-sd

@pytest.mark.slow
def test_shapes_sd(shapes_available):
    from backend.runs.build import build_pipeline
    from backend.sampling import generate
    from backend.variant import Variant

    base_v = Variant.from_dict({"model": "shapes", "steps": 10})
    base = generate(build_pipeline(base_v), base_v, ["a red circle"], [0])
    v1 = Variant.from_dict({"model": "shapes", "steps": 10, "deepcache": {"interval": 1}})
    assert (generate(build_pipeline(v1), v1, ["a red circle"], [0]) == base).all()
    v3 = Variant.from_dict({"model": "shapes", "steps": 10, "deepcache": {"interval": 3, "branch": 0}})
    pipe = build_pipeline(v3)
    out = generate(pipe, v3, ["a red circle"], [0])
    assert get_hook(pipe).stats()["patterns"] == ["FppFppFppF"]
    assert out.shape == base.shape and abs(out - base).mean() < 0.25  # close to the baseline, not equal
