"""Every method on every model family: tiny random-weight SD 1.5 / SD 2 / SDXL / 2-level pipelines built from
config, saved with save_pretrained and loaded as `model` paths; single-file checkpoints; evaluate --prompts.

`pytest tests/ -k family -v` selects this matrix (every test name contains "family").
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    EulerDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from backend.__main__ import main
from backend.metadata import pipeline_info
from backend.models import ModelError, load_pipeline, model_family
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant

FAMILIES = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "two-level": "unet"}
WORDS = ("a an the of on in with and at by photo painting dog cat car house tree street city red blue green old small "
         "large sunset beach mountain river man woman child table cup book flower sky night").split()
CALIB = {"calib_prompts": 2, "calib_steps": 2, "calib_samples": 4}


def _tokenizer():
    """A word-level tokenizer with a small everyday vocabulary (not the Shapes one: these models have no judge)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=16)


def _text_config() -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=16, projection_dim=16, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, sample_size=32,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def _schedule(**kw) -> dict:
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, **kw)


def build_family(family: str) -> DiffusionPipeline:
    """A tiny random-weight pipeline with the layout of ``family`` (16×16 images, 8×8 latents)."""
    torch.manual_seed(0)
    if family == "sdxl":  # two encoders, text_time micro-conditioning, 1/2/3 transformer layers per block
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
            transformer_layers_per_block=(1, 2, 3), projection_class_embeddings_input_dim=6 * 4 + 16,
            cross_attention_dim=32)
        return StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config()),
            text_encoder_2=CLIPTextModelWithProjection(_text_config()), tokenizer=_tokenizer(),
            tokenizer_2=_tokenizer(), unet=unet, scheduler=EulerDiscreteScheduler(**_schedule()))
    kw = dict(sample_size=8, norm_num_groups=4, cross_attention_dim=16, layers_per_block=1)
    if family == "sd1":  # SD 1.5's block layout, PNDM, epsilon
        unet = UNet2DConditionModel(block_out_channels=(8, 16, 16, 16), attention_head_dim=2, **kw)
        scheduler = PNDMScheduler(**_schedule(skip_prk_steps=True))
    elif family == "sd2":  # linear projections, per-block heads, v-prediction
        unet = UNet2DConditionModel(block_out_channels=(8, 16, 16, 16), attention_head_dim=(2, 4, 4, 4),
                                    use_linear_projection=True, **kw)
        scheduler = DDIMScheduler(**_schedule(prediction_type="v_prediction", clip_sample=False,
                                              set_alpha_to_one=False))
    else:  # diffusers' 2-level test layout
        unet = UNet2DConditionModel(block_out_channels=(8, 16), attention_head_dim=2,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **kw)
        scheduler = DDIMScheduler(**_schedule(clip_sample=False, set_alpha_to_one=False))
    return StableDiffusionPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config()), tokenizer=_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family in FAMILIES:
        build_family(family).save_pretrained(root / family)
        out[family] = str(root / family)
    return out


def _images(variant: dict, prompts=("a red car", "a dog on the beach")) -> np.ndarray:
    v = Variant.from_dict({"steps": 2, **variant})
    return generate(build_pipeline(v), v, list(prompts), list(range(len(prompts))))


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    """The same model's images, equal up to fp32 rounding: on some CPUs (AMD EPYC, AVX2 only) oneDNN picks another
    kernel for a converted tensor's memory layout, and images differ in the 6th decimal (2e-6 measured)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _finite(images: np.ndarray) -> bool:
    return images.shape[-1] == 3 and bool(np.isfinite(images).all())


# ------------------------------------------------------------------------------------------------ detection

@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected(family_dirs, family):
    pipe = load_pipeline(family_dirs[family])
    assert model_family(pipe) == FAMILIES[family] == pipeline_info(pipe).family


def test_family_dit_pipeline_is_refused_in_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    DiTPipeline(transformer=dit, vae=_vae(), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "dit")
    out = tmp_path / "x.png"
    variant = json.dumps({"model": str(tmp_path / "dit"), "steps": 2, "deepcache": {"interval": 2}})
    assert main(["generate", "--variant", variant, "--prompt", "a cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "DiTTransformer2DModel" in err and "sd1, sd2, sdxl, unet, pixart, sd3, flux" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ the matrix

@pytest.mark.parametrize("family", FAMILIES)
def test_family_generate_and_deepcache(family_dirs, family):
    model = family_dirs[family]
    base = _images({"model": model})
    assert _finite(base)
    # a private U-Net on the same weights: interval 1 is bit-identical to the baseline on every family
    assert np.array_equal(_images({"model": model, "deepcache": {"interval": 1}}), base)
    for section in ({"interval": 2, "branch": 0}, {"interval": 2, "schedule": "nonuniform", "center": 1}):
        assert _finite(_images({"model": model, "deepcache": section}))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_ptq_simulated_real_w4a8_and_deepcache(family_dirs, family):
    model = family_dirs[family]
    base = _images({"model": model})
    w8a8 = _images({"model": model, "quant": {"weight_bits": 8, "act_bits": 8, **CALIB}})
    assert _finite(w8a8) and not np.array_equal(w8a8, base)
    real = _images({"model": model, "quant": {"weight_bits": 8, "act_bits": 8, "kernels": "real", **CALIB}})
    assert _finite(real)
    assert _finite(_images({"model": model, "quant": {"weight_bits": 4, "act_bits": 8, **CALIB}}))
    stacked = _images({"model": model, "quant": {"weight_bits": 8, "act_bits": 8, **CALIB},
                       "deepcache": {"interval": 2}})
    assert _finite(stacked)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_efficientdm_checkpoint_generates(family_dirs, family, tmp_path):
    from backend.methods.quant.config import FinetuneConfig, QuantConfig
    from backend.methods.quant.train import finetune

    model = family_dirs[family]
    ft = FinetuneConfig(weight_bits=4, act_bits=8, max_iters=2, train_steps=2, batch_size=1, lora_rank=2)
    summary = finetune(load_pipeline(model), ft, tmp_path / "edm", quant=QuantConfig(weight_bits=4, act_bits=8,
                                                                                      **CALIB))
    assert summary["status"] == "done" and summary["iters"] == 2 and summary["final_loss_is_finite"]
    assert _finite(_images({"model": model, "quant": {"checkpoint": str(tmp_path / "edm")}}))


def _distill(model: str, out: Path, lora: bool) -> dict:
    from backend.methods.consistency.config import DistillConfig
    from backend.methods.consistency.distill import distill

    cfg = DistillConfig(lora=lora, lora_rank=2, max_steps=1, batch_size=2, num_ddim_timesteps=10, beta=0.0)
    return distill(load_pipeline(model), cfg, out)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_lcd_student_generates_and_loads_in_stock_diffusers(family_dirs, family, tmp_path):
    model = family_dirs[family]
    summary = _distill(model, tmp_path / "lcd", lora=False)
    assert summary["status"] == "done" and "built-in general captions" in summary["data"]
    assert _finite(_images({"model": model, "consistency": {"checkpoint": str(tmp_path / "lcd")}}))
    cls = StableDiffusionXLPipeline if family == "sdxl" else LatentConsistencyModelPipeline
    stock = cls.from_pretrained(tmp_path / "lcd", local_files_only=True)
    assert isinstance(stock.scheduler, LCMScheduler) and stock.unet.config.time_cond_proj_dim
    stock.set_progress_bar_config(disable=True)
    images = stock("a red car", num_inference_steps=2, guidance_scale=3.0, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(images).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_lcm_lora_generates_and_loads_in_stock_diffusers(family_dirs, family, tmp_path):
    model = family_dirs[family]
    assert _distill(model, tmp_path / "lora", lora=True)["status"] == "done"
    assert _finite(_images({"model": model, "consistency": {"checkpoint": str(tmp_path / "lora")}}))
    stock = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    stock.load_lora_weights(str(tmp_path / "lora"), weight_name="pytorch_lora_weights.safetensors")
    stock.scheduler = LCMScheduler.from_pretrained(tmp_path / "lora" / "scheduler")
    stock.set_progress_bar_config(disable=True)
    images = stock("a red car", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(images).all()


def test_family_pndm_progress_counts_the_steps_that_run(family_dirs):
    v = Variant.from_dict({"model": family_dirs["sd1"], "steps": 3})
    seen = []
    generate(build_pipeline(v), v, ["a cat"], [0], on_step=lambda done, total: seen.append((done, total)))
    assert all(done <= total for done, total in seen) and seen[-1][0] == seen[-1][1] == 4  # PLMS: one extra step


# ------------------------------------------------------------------------------------------------ evaluate

def test_family_evaluate_prompts_on_sdxl_has_no_judge_metrics(family_dirs, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car on a street\na cat on a table\na house by the sea\n", encoding="utf-8")
    model = family_dirs["sdxl"]
    variant = json.dumps({"model": model, "steps": 2, "quant": {"weight_bits": 8, "act_bits": 8, **CALIB}})
    rc = main(["evaluate", "--variant", variant, "--baseline", json.dumps({"model": model, "steps": 2}),
               "--prompts", str(prompts), "--n", "2", "--repeats", "1", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 2 and result["prompt_set"] == "file"
    assert 0 < result["ssim_vs_baseline"] <= 1 and result["psnr_vs_baseline"] > 0
    lo, hi = result["psnr_vs_baseline_ci"]  # paired per prompt and seed, bootstrap interval
    assert lo <= result["psnr_vs_baseline"] <= hi and len(result["ssim_vs_baseline_ci"]) == 2
    for key in ("prompt_accuracy", "attr_accuracy", "fd_shapes", "reward"):
        assert key not in result
    assert "not a Shapes-world model" in result["judge_absent"]


@pytest.mark.parametrize("content, expected", [(b"\n  \n", "has no prompts"), (b"caf\xe9 au lait\n", "not UTF-8"),
                                               (None, "scorer")])
def test_family_evaluate_bad_input_is_one_line_exit_2(family_dirs, tmp_path, capsys, content, expected):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(content if content is not None else b"a cat\n")
    args = ["evaluate", "--variant", json.dumps({"model": family_dirs["sd1"], "steps": 2}),
            "--prompts", str(prompts), "--n", "1"]
    if content is None:  # a scorer asked for by name whose weights are not in the local cache
        args += ["--scorers", "clip_score"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.strip().count("\n") == 0 and captured.out == ""


# ------------------------------------------------------------------------------------------------ single files

def test_family_single_file_shapes_sd_draws_the_same_image(shapes_available, tmp_path):
    from backend.metrics.quality import psnr_ssim
    from backend.models import SHAPES_DIR
    from backend.single_file import to_single_file

    path = to_single_file(SHAPES_DIR, tmp_path / "shapes-sd.safetensors")
    prompts = ["a large red circle in the top left"]
    folder = _images({"model": "shapes", "steps": 4}, prompts)
    single = _images({"model": str(path), "model_config": str(SHAPES_DIR), "steps": 4}, prompts)
    assert psnr_ssim(single, folder)[0] >= 40


def test_family_single_file_sd2_loads_with_a_config_folder(family_dirs, tmp_path):
    from backend.models import load_pipeline
    from backend.single_file import to_single_file

    path = to_single_file(family_dirs["sd2"], tmp_path / "sd2.safetensors")
    folder, single = load_pipeline(family_dirs["sd2"]), load_pipeline(str(path), config=family_dirs["sd2"])
    for name in ("unet", "vae", "text_encoder"):  # the very same weights
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a), name
    assert_same_images(_images({"model": str(path), "model_config": family_dirs["sd2"]}),
                       _images({"model": family_dirs["sd2"]}))


def test_family_single_file_refusals(family_dirs, tmp_path):
    from safetensors.torch import save_file

    from backend.single_file import to_single_file

    path = to_single_file(family_dirs["sd1"], tmp_path / "sd1.safetensors")
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline folder but sd1.safetensors"):
        load_pipeline(str(path), config=family_dirs["sdxl"])
    save_file({"some.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="not a checkpoint in an original layout diffusers converts"):
        load_pipeline(str(tmp_path / "other.safetensors"))
    (tmp_path / "old.ckpt").write_bytes(b"not opened")
    with pytest.raises(ModelError, match="is a pickle"):
        load_pipeline(str(tmp_path / "old.ckpt"))
    with pytest.raises(ModelError, match="only for a single-file model"):
        load_pipeline(family_dirs["sd1"], config=family_dirs["sd1"])


def test_family_single_file_ckpt_needs_allow_pickle(family_dirs, tmp_path, capsys):
    from safetensors.torch import load_file

    from backend.single_file import to_single_file

    tensors = load_file(to_single_file(family_dirs["sd1"], tmp_path / "sd1.safetensors"))
    torch.save({"state_dict": tensors}, tmp_path / "sd1.ckpt")
    variant = {"model": str(tmp_path / "sd1.ckpt"), "model_config": family_dirs["sd1"]}
    with pytest.raises(ModelError, match="allow_pickle"):
        _images(variant)
    assert_same_images(_images({**variant, "allow_pickle": True}), _images({"model": family_dirs["sd1"]}))
    assert "warning: loading the pickle" in capsys.readouterr().err


def _tiny_clip_in_cache(cache: Path, repo: str) -> None:
    """A tiny random CLIP model + processor stored like a Hub download in the Hugging Face cache ``cache``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = cache / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / "0"
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0")
    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (snap / "vocab.json").write_text(json.dumps(vocab))
    (snap / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(snap / "vocab.json"), str(snap / "merges.txt"))
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(snap)
    n = len(vocab)
    text = dict(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(snap)


def test_family_scorers_use_local_weights_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from backend.metrics import scorers

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    images, baseline = np.random.default_rng(0).random((2, 2, 16, 16, 3))
    before = scorers.score(images, ["a cat", "a dog"], baseline)
    assert "clip_score" not in before and "not in the local Hugging Face cache" in before["unavailable"]["clip_score"]
    _tiny_clip_in_cache(tmp_path, "openai/clip-vit-base-patch16")
    after = scorers.score(images, ["a cat", "a dog"], baseline)
    assert 0 <= after["clip_score"] <= 100 and "clip_score" not in after["unavailable"]
    assert after["psnr_vs_baseline"] == before["psnr_vs_baseline"] and "pickscore" in after["unavailable"]
    with pytest.raises(scorers.ScorerUnavailable, match="pickscore"):
        scorers.require(["clip_score", "pickscore"])
