"""Configs of the shapes-sd components, built with the stock diffusers / transformers classes."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from backend.world.shapes import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES

MAX_TOKENS = 16
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
TEXT_DIM = 64


def vocabulary() -> list[str]:
    words = {"a", "an"} | set(SHAPES) | set(COLORS) | set(SIZES)
    for phrase in list(POSITIONS) + list(RELATIONS):
        words |= set(phrase.split())
    return SPECIAL + sorted(words)


def build_tokenizer(max_tokens: int = MAX_TOKENS) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: lower-cased whitespace words, <bos> … <eos>, padded to max_tokens."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=max_tokens,
    )


def build_text_encoder() -> CLIPTextModel:
    n = len(vocabulary())
    cfg = CLIPTextConfig(
        vocab_size=n, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, projection_dim=TEXT_DIM,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return CLIPTextModel(cfg)


def build_vae() -> AutoencoderKL:
    """64×64 RGB ↔ 16×16×4 latents (two downsamples)."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
    )


def build_unet() -> UNet2DConditionModel:
    """Three resolution levels, layers_per_block=2 and cross-attention in the upper levels, like SD 1.5;
    plus diffusers' "text" addition embedding (attention-pooled prompt added to the time embedding), which
    gives every resnet the prompt's attributes and makes a from-scratch text encoder learn much faster."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=2, norm_num_groups=16,
        addition_embed_type="text", addition_embed_type_num_heads=4,
    )


def build_scheduler() -> DDIMScheduler:
    """Stable Diffusion's noise schedule (scaled-linear betas, epsilon prediction)."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
