"""Random-weight diffusion-transformer (DiT) pipelines built from config, no downloads: ``tiny-pixart``,
``tiny-sd3``, ``tiny-flux`` (structure and tests) and the full-size transformers ``pixart-arch`` (PixArt-Σ) and
``sd3-arch`` (SD3-medium) for cost benches at small resolutions (their text encoders are one-layer stand-ins of the
right widths: only the transformer's cost is measured). Tokenizers are the Shapes world's word-level tokenizer."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

DIT_ARCHS = ("tiny-pixart", "tiny-sd3", "tiny-flux", "pixart-arch", "sd3-arch")
TOKENS = 16  # text length of the random builds (speedlab.json's max_sequence_length)
# steps / guidance / size / text length of each build (what speedlab.json holds for a real model)
ARCH_DEFAULTS = {
    "tiny-pixart": {"steps": 20, "guidance": 4.5, "height": 32, "width": 32, "max_sequence_length": TOKENS},
    "tiny-sd3": {"steps": 20, "guidance": 5.0, "height": 32, "width": 32, "max_sequence_length": TOKENS},
    "tiny-flux": {"steps": 20, "guidance": 3.5, "height": 32, "width": 32, "max_sequence_length": TOKENS},
    "pixart-arch": {"steps": 20, "guidance": 4.5, "height": 256, "width": 256, "max_sequence_length": TOKENS},
    "sd3-arch": {"steps": 28, "guidance": 7.0, "height": 256, "width": 256, "max_sequence_length": TOKENS},
}


def _vae(tiny: bool, latent_channels: int = 4, flow: bool = False) -> AutoencoderKL:
    blocks = (8, 8) if tiny else (128, 256, 512, 512)
    extra = {"shift_factor": 0.0, "scaling_factor": 1.0} if flow else {}
    return AutoencoderKL(block_out_channels=blocks, latent_channels=latent_channels, norm_num_groups=4 if tiny else 32,
                         sample_size=32 if tiny else 1024, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), **extra)


def _t5(d_model: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=2 * min(d_model, 64), num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
                                   decoder_start_token_id=0))


def _clip(hidden: int, cls=CLIPTextModel, projection: int | None = None):
    return cls(CLIPTextConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * min(hidden, 64),
                              num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=TOKENS,
                              projection_dim=projection or hidden, pad_token_id=0, bos_token_id=1, eos_token_id=2))


def build_dit_pipeline(arch: str):
    """The random-weight pipeline ``arch`` (one of :data:`DIT_ARCHS`), seeded: the same weights every time."""
    from backend.world.architecture import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer(TOKENS)
    tiny = arch.startswith("tiny-")
    if arch in ("tiny-pixart", "pixart-arch"):
        text_dim = 32 if tiny else 4096
        transformer = PixArtTransformer2DModel(
            num_attention_heads=2 if tiny else 16, attention_head_dim=8 if tiny else 72, in_channels=4,
            out_channels=8, num_layers=6 if tiny else 28, cross_attention_dim=16 if tiny else 1152,
            sample_size=4 if tiny else 128, patch_size=2, caption_channels=text_dim, interpolation_scale=None,
            use_additional_conditions=False)
        scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                                prediction_type="epsilon")
        return PixArtSigmaPipeline(tokenizer=tok, text_encoder=_t5(text_dim), vae=_vae(tiny), transformer=transformer,
                                   scheduler=scheduler)
    if arch in ("tiny-sd3", "sd3-arch"):
        clip_l, clip_g, t5 = (16, 16, 32) if tiny else (768, 1280, 4096)
        transformer = SD3Transformer2DModel(
            sample_size=4 if tiny else 128, patch_size=2, in_channels=4 if tiny else 16,
            out_channels=4 if tiny else 16, num_layers=6 if tiny else 24, attention_head_dim=8 if tiny else 64,
            num_attention_heads=2 if tiny else 24, joint_attention_dim=t5, caption_projection_dim=16 if tiny else 1536,
            pooled_projection_dim=clip_l + clip_g, pos_embed_max_size=8 if tiny else 192)
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(tiny, 4 if tiny else 16, flow=True),
            text_encoder=_clip(clip_l, CLIPTextModelWithProjection), tokenizer=tok,
            text_encoder_2=_clip(clip_g, CLIPTextModelWithProjection), tokenizer_2=tok,
            text_encoder_3=_t5(t5), tokenizer_3=tok)
    if arch == "tiny-flux":
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=3, num_single_layers=3, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
            axes_dims_rope=(2, 2, 4))
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=16, max_image_seq_len=256)
        return FluxPipeline(scheduler=scheduler, vae=_vae(True, 4, flow=True), text_encoder=_clip(16), tokenizer=tok,
                            text_encoder_2=_t5(32), tokenizer_2=tok, transformer=transformer)
    raise ValueError(f"unknown DiT architecture {arch!r}; allowed: {', '.join(DIT_ARCHS)}")
