"""Fake-quantized Conv2d / Linear layers, LSQ quantizers and TALSQ per-denoising-step activation scales.

- Weights: per output channel, asymmetric, integers in [0, 2^b − 1]; the step size is learnable (LSQ),
  the zero point frozen (as in EfficientDM).
- Activations: the layer's *input*, per tensor, asymmetric. Temporal quantizers (TALSQ) hold one
  step size and zero point per denoising step; the index comes from a shared :class:`TimestepIndex`
  that the U-Net wrapper sets from the timestep the U-Net is called with (never a call counter).
- Rounding is straight-through (a custom autograd function, so the forward value is exactly
  ``round(x)`` and a saved integer model reproduces the live one bit for bit).
- QALoRA: an optional rank-r LoRA (peft names: ``lora_A`` k×k conv or linear, ``lora_B`` 1×1 / linear,
  B = 0 at init) added to the weight *before* fake quantization: Ŵ = Q(W0 + BA, s_w); ``merge`` /
  ``unmerge`` fold it into W0 and back, as peft's LoRA layers do.
- One wrapper class per layer type (:data:`QUANT_LAYERS`: Conv2d, Linear); :func:`wrap_layer` dispatches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity gradient in the backward pass."""
    return _RoundSTE.apply(x)


class _FakeQuantWeight(torch.autograd.Function):
    """(clamp(round(w/s) + z, 0, qmax) − z)·s with the gradients autograd gives that expression (straight-through
    rounding, clamp mask, LSQ step-size gradient), keeping only w, s, z for the backward pass: autograd would keep
    two more weight-sized intermediates per layer until the backward pass (3 GiB each on SD 1.5's U-Net)."""

    @staticmethod
    def forward(ctx, w, s, z, qmax):
        ctx.save_for_backward(w, s, z)
        ctx.qmax = qmax
        return (torch.clamp(torch.round(w / s) + z, 0, qmax) - z) * s

    @staticmethod
    def backward(ctx, grad):
        w, s, z = ctx.saved_tensors
        a = w / s
        b = torch.round(a) + z
        grad_c = grad * s
        grad_s = (grad * (torch.clamp(b, 0, ctx.qmax) - z)).sum_to_size(s.shape)
        grad_a = torch.where((b >= 0) & (b <= ctx.qmax), grad_c, 0)
        grad_s = grad_s + (-grad_a * (a / s)).sum_to_size(s.shape)
        return grad_a / s, grad_s, None, None


def check_bits(bits: int, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{what}: {bits!r} is not allowed; allowed: a whole number from 2 to 8")
    return bits


class WeightQuantizer(nn.Module):
    """Per-output-channel fake quantizer with a learnable (LSQ) step size: asymmetric min/max, or symmetric
    (zero point 2^(b−1), so ``codes − zero`` are the signed integers that int8 kernels take)."""

    def __init__(self, out_channels: int, bits: int, symmetric: bool = False):
        super().__init__()
        self.bits = check_bits(bits, "weight_bits")
        self.symmetric = symmetric
        self.scale = nn.Parameter(torch.ones(out_channels))
        self.register_buffer("zero_point", torch.zeros(out_channels))

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    def _shape(self, w: torch.Tensor) -> tuple[int, ...]:
        return (-1,) + (1,) * (w.dim() - 1)

    @torch.no_grad()
    def init_minmax(self, w: torch.Tensor) -> None:
        if w.is_meta:  # a weight that a checkpoint is about to provide (real-kernel loading)
            return
        flat = w.detach().reshape(w.shape[0], -1)
        lo = flat.min(dim=1).values.clamp(max=0)
        hi = flat.max(dim=1).values.clamp(min=0)
        if self.symmetric:
            half = 2 ** (self.bits - 1)
            self.scale.copy_((torch.maximum(-lo, hi) / (half - 1)).clamp(min=1e-8))
            self.zero_point.fill_(half)
            return
        scale = ((hi - lo) / self.qmax).clamp(min=1e-8)
        self.scale.copy_(scale)
        self.zero_point.copy_(torch.round(-lo / scale).clamp(0, self.qmax))

    def integers(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes (as float, differentiable through the STE) of w."""
        s = self.scale.view(self._shape(w))
        z = self.zero_point.view(self._shape(w))
        return torch.clamp(round_ste(w / s) + z, 0, self.qmax)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        s = self.scale.view(self._shape(q))
        z = self.zero_point.view(self._shape(q))
        return (q - z) * s

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shape = self._shape(w)
        return _FakeQuantWeight.apply(w, self.scale.view(shape), self.zero_point.view(shape), self.qmax)


class TimestepIndex:
    """Which per-step activation scale to use: set from the U-Net's timestep through a timestep→index map.

    ``timesteps`` are the denoising timesteps the per-step tables were made for (e.g. a 10-step DDIM
    schedule used in fine-tuning). A timestep of the map selects its entry; any other timestep (a
    different step count at sampling time) selects the entry of the nearest mapped timestep, which is
    how the tables are resampled. :func:`backend.methods.quant.model.resample_timesteps` instead
    rewrites the tables for a new schedule by linear interpolation.
    """

    def __init__(self, timesteps: list[int] | None = None):
        self.timesteps: list[int] = [int(t) for t in (timesteps or [0])]
        self.current = 0

    def __len__(self) -> int:
        return len(self.timesteps)

    def lookup(self, t: int) -> int:
        try:
            return self.timesteps.index(int(t))
        except ValueError:
            return min(range(len(self.timesteps)), key=lambda i: (abs(self.timesteps[i] - t), i))

    def set_timestep(self, timestep) -> int:
        if isinstance(timestep, torch.Tensor):
            flat = timestep.detach().reshape(-1)
            if flat.numel() > 1 and not bool((flat == flat[0]).all()):
                raise ValueError("temporal activation quantization needs one timestep per U-Net call; got a batch "
                                 f"of different timesteps {flat.tolist()[:4]}...")
            timestep = flat[0].item() if flat.numel() else 0
        self.current = self.lookup(round(float(timestep)))
        return self.current


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric activation fake quantizer; temporal (TALSQ) when given a TimestepIndex."""

    def __init__(self, bits: int, index: TimestepIndex | None = None):
        super().__init__()
        self.bits = check_bits(bits, "act_bits")
        self.index = index
        n = len(index) if index is not None else 1
        self.scale = nn.Parameter(torch.ones(n))
        self.zero_point = nn.Parameter(torch.zeros(n))
        self.enabled = True
        self.observed: list[torch.Tensor] | None = None  # calibration: inputs are recorded, not quantized

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    @property
    def temporal(self) -> bool:
        return self.index is not None

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        scale = max((hi - lo) / self.qmax, 1e-8)
        self.scale.fill_(scale)
        self.zero_point.fill_(float(min(max(round(-lo / scale), 0), self.qmax)))

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, candidates: int = 80, p: float = 2.4, max_elems: int = 1 << 14) -> None:
        """MSE-style range search (Lp, p=2.4): shrink [min, max] in 1% steps and keep the lowest error."""
        flat = x.detach().float().reshape(-1)
        if flat.numel() > max_elems:
            gen = torch.Generator().manual_seed(flat.numel())
            flat = flat[torch.randint(0, flat.numel(), (max_elems,), generator=gen)]
        lo0, hi0 = min(flat.min().item(), 0.0), max(flat.max().item(), 0.0)
        if hi0 - lo0 < 1e-12:
            self.set_range(lo0, lo0 + 1e-6)
            return
        shrink = 1.0 - 0.01 * torch.arange(candidates, dtype=torch.float32)
        lo, hi = lo0 * shrink, hi0 * shrink
        scale = ((hi - lo) / self.qmax).clamp(min=1e-8)
        zero = torch.round(-lo / scale).clamp(0, self.qmax)
        xq = (torch.clamp(torch.round(flat[None] / scale[:, None]) + zero[:, None], 0, self.qmax)
              - zero[:, None]) * scale[:, None]
        err = (xq - flat[None]).abs().pow(p).mean(dim=1)
        best = int(torch.argmin(err))
        self.scale.data.fill_(float(scale[best]))
        self.zero_point.data.fill_(float(zero[best]))

    @torch.no_grad()
    def resize(self, n: int, new_ts: list[int] | None = None, old_ts: list[int] | None = None) -> None:
        """Give the table n entries: repeat a single entry, or interpolate along the timestep axis."""
        if self.scale.numel() == n and old_ts == new_ts:
            return
        if self.scale.numel() == 1 or not old_ts or not new_ts:
            s, z = self.scale.data[:1].repeat(n), self.zero_point.data[:1].repeat(n)
        else:
            s, z = (_interp(new_ts, old_ts, v) for v in (self.scale.data, self.zero_point.data))
        self.scale = nn.Parameter(s.clone(), requires_grad=self.scale.requires_grad)
        self.zero_point = nn.Parameter(z.clone(), requires_grad=self.zero_point.requires_grad)

    def step_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.index.current if self.index is not None else 0
        if i >= self.scale.numel():
            raise ValueError(f"activation step index {i} is outside this layer's {self.scale.numel()} step sizes")
        return self.scale[i], self.zero_point[i]

    def observe(self, on: bool = True) -> None:
        """Start (on) or stop recording inputs for calibration."""
        self.observed = [] if on else None

    def calibrate_observed(self) -> None:
        """Set the range from the recorded inputs (all per-step entries get the same value) and stop."""
        if self.observed:
            self.calibrate(torch.cat(self.observed))
        self.observed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observed is not None:
            flat = x.detach().float().reshape(-1)
            if flat.numel() > 1 << 14:
                gen = torch.Generator().manual_seed(len(self.observed))
                flat = flat[torch.randint(0, flat.numel(), (1 << 14,), generator=gen)]
            self.observed.append(flat.cpu())
            return x
        if not self.enabled:
            return x
        s, z = self.step_params()
        z = round_ste(z)
        q = torch.clamp(round_ste(x / s) + z, 0, self.qmax)
        return (q - z) * s


def _interp(new_ts: list[int], old_ts: list[int], values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of values (given at old_ts) at new_ts; constant beyond the ends."""
    order = sorted(range(len(old_ts)), key=lambda i: old_ts[i])
    xs = [float(old_ts[i]) for i in order]
    ys = [values[i] for i in order]
    out = []
    for t in new_ts:
        t = float(t)
        if t <= xs[0]:
            out.append(ys[0])
        elif t >= xs[-1]:
            out.append(ys[-1])
        else:
            j = next(k for k in range(1, len(xs)) if xs[k] >= t)
            w = (t - xs[j - 1]) / (xs[j] - xs[j - 1])
            out.append(ys[j - 1] * (1 - w) + ys[j] * w)
    return torch.stack(out)


LEGACY_KEYS = {"base.": "base_layer."}  # state-dict names before the peft-style naming → today's


def rename_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A layer's state dict with names written before the peft-style naming (``base.weight``) renamed
    (``base_layer.weight``); other keys unchanged."""
    out = {}
    for key, value in state.items():
        old = next((o for o in LEGACY_KEYS if key.startswith(o)), None)
        out[LEGACY_KEYS[old] + key[len(old):] if old else key] = value
    return out


class QuantLayer(nn.Module):
    """A fake-quantized wrapper of a layer (peft style: the original is kept as ``base_layer``).

    Weight sources, in order: frozen integer codes ``w_int`` (a loaded checkpoint), else
    ``w0`` + LoRA (QALoRA; w0 is the dequantized PTQ weight), else the base weight (PTQ, and QAT where
    it is the trainable latent weight). The LoRA factors are peft's ``lora_A`` (r × the weight's input
    dims: a k×k conv or linear) and ``lora_B`` (out × r: 1×1 / linear), ΔW = ``scaling`` · B·A; they are
    parameters rather than peft's sub-layers because ΔW is always added to the weight before fake
    quantization, never run as a side branch. :meth:`merge` folds ΔW into ``w0``, :meth:`unmerge` restores it.

    One subclass per wrapped type (:data:`QUANT_LAYERS`); :func:`wrap_layer` picks it.
    """

    base_type: type[nn.Module] = nn.Module  # the layer type a subclass wraps

    def __init__(self, base_layer: nn.Module, w_bits: int, a_bits: int, index: TimestepIndex | None,
                 role: str = "body", symmetric_weights: bool = False):
        super().__init__()
        if not isinstance(base_layer, self.base_type) or self.base_type is nn.Module:
            raise TypeError(f"{type(self).__name__} wraps {self.base_type.__name__}, not {type(base_layer).__name__}; "
                            "use wrap_layer to pick the wrapper by type")
        self.base_layer = base_layer
        self.role = role
        self.w_quant = WeightQuantizer(base_layer.weight.shape[0], w_bits, symmetric_weights)
        self.a_quant = ActQuantizer(a_bits, index)
        self.register_buffer("w0", None)
        self.register_buffer("w_int", None)
        self.register_buffer("w0_unmerged", None, persistent=False)  # W0 while ΔW is merged into w0
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.scaling = 1.0  # EfficientDM's ΔW = BA (peft's lora_alpha / r)
        self.quantize = True
        self._cache: torch.Tensor | None = None
        device = base_layer.weight.device if not base_layer.weight.is_meta else torch.device("cpu")
        self.w_quant.to(device)
        self.a_quant.to(device)
        self.w_quant.init_minmax(base_layer.weight)

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base_layer, nn.Conv2d)

    @property
    def in_features(self) -> int:  # read by diffusers (SDXL checks add_embedding.linear_1.in_features)
        return self.base_layer.weight.shape[1]

    @property
    def lora_rank(self) -> int:
        return 0 if self.lora_A is None else self.lora_A.shape[0]

    @property
    def merged(self) -> bool:
        """Whether the LoRA update is folded into ``w0`` (:meth:`merge`)."""
        return self.w0_unmerged is not None

    def add_lora(self, rank: int) -> None:
        """QALoRA: freeze W0 = dequantized current integer weight and add a rank-r LoRA (B = 0)."""
        w = self.base_layer.weight
        fan_in = w[0].numel()
        rank = max(1, min(rank, w.shape[0], fan_in))
        with torch.no_grad():
            self.w0 = self.w_quant(w.detach()).clone()
        a = torch.empty(rank, *w.shape[1:], device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(a.view(rank, -1), a=math.sqrt(5))
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device, dtype=w.dtype))
        self.w0_unmerged = None

    def get_delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B·A in the weight's shape (peft's name)."""
        if self.lora_A is None:
            raise ValueError(f"{type(self).__name__} has no LoRA; add_lora(rank) first")
        delta = self.lora_B @ self.lora_A.reshape(self.lora_A.shape[0], -1)
        return (delta * self.scaling).view(self.lora_B.shape[0], *self.lora_A.shape[1:])

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Fold ΔW into ``w0`` (the weight is then quantized as Q(W0 + BA) with no LoRA term per call); the
        forward output is unchanged bit for bit. ``safe_merge``: ValueError instead of merging a non-finite
        weight. A merged layer's LoRA gets no gradients (as in peft); merging twice is a no-op."""
        if self.merged:
            return
        w = self.w0 + self.get_delta_weight()
        if safe_merge and not bool(torch.isfinite(w).all()):
            raise ValueError(f"{type(self).__name__}: merging the LoRA gives non-finite weights; not merged")
        self.w0_unmerged, self.w0 = self.w0, w
        self._cache = None

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: W0 exactly as it was (a kept copy, not a subtraction); no-op when not merged."""
        if self.merged:
            self.w0, self.w0_unmerged = self.w0_unmerged, None
            self._cache = None

    def merged_weight(self) -> torch.Tensor:
        w = self.w0 if self.w0 is not None else self.base_layer.weight
        if self.lora_A is not None and not self.merged:
            w = w + self.get_delta_weight()
        return w

    def int_weight(self) -> torch.Tensor:
        """The integer weight codes (float tensor of whole numbers in [0, 2^b − 1])."""
        if self.w_int is not None:
            return self.w_int.float()
        with torch.no_grad():
            return self.w_quant.integers(self.merged_weight())

    def weight(self) -> torch.Tensor:
        if not self.quantize:
            return self.merged_weight()
        if self.w_int is not None:
            return self.w_quant.dequantize(self.w_int.to(self.w_quant.scale.dtype))
        return self.w_quant(self.merged_weight())

    def set_codes(self, codes: torch.Tensor | None) -> None:
        """Make the integer ``codes`` the weight (None: no float weight path left at all); drops W0 and LoRA."""
        self.w_int = codes
        self.w0 = self.w0_unmerged = self.lora_A = self.lora_B = None
        self._cache = None

    def freeze(self) -> None:
        """Replace the float weight path by the integer codes (what a checkpoint stores); drops LoRA."""
        self.set_codes(self.int_weight().round().to(torch.uint8))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What resuming a fine-tune needs: the state dict without the frozen base layer (its weight is kept
        when it trains: QAT's latent weight). ValueError while merged (W0 would be lost)."""
        if self.merged:
            raise ValueError("a merged QALoRA layer has no separate W0 to save; unmerge() first")
        return {k: v.detach().clone() for k, v in self.state_dict().items() if self._trains(k)}

    def _trains(self, key: str) -> bool:
        """Whether state-dict ``key`` is part of :meth:`trainable_state`."""
        if key.startswith("base_layer."):
            return key == "base_layer.weight" and self.base_layer.weight.requires_grad
        return True

    @torch.no_grad()
    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state` (old names renamed by :func:`rename_legacy_keys`); ValueError
        naming the first missing or unexpected key."""
        if self.merged:
            raise ValueError("cannot load W0 into a merged QALoRA layer; unmerge() first")
        tensors = rename_legacy_keys(tensors)
        own = self.state_dict()
        missing = sorted(k for k in own if self._trains(k) and k not in tensors)
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise ValueError(f"{type(self).__name__} state does not fit this layer: {what}")
        for key, value in tensors.items():
            own[key].copy_(value)
        self._cache = None

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _layer_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The base layer's operation with the weight ``w`` (and the base layer's own bias)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize or self.a_quant.observed is not None:
            x = self.a_quant(x)
        if not self.training and not torch.is_grad_enabled():
            if self._cache is None:
                self._cache = self.weight().detach()
            w = self._cache
        else:
            self._cache = None
            w = self.weight()
        return self._layer_forward(x, w)

    def extra_repr(self) -> str:
        t = len(self.a_quant.index) if self.a_quant.temporal else 1
        return (f"{self.role}, W{self.w_quant.bits}A{self.a_quant.bits}, lora_rank={self.lora_rank}, "
                f"merged={self.merged}, act_steps={t}, frozen={self.w_int is not None}")


class QuantConv2d(QuantLayer):
    """A fake-quantized ``nn.Conv2d`` (its padding mode, stride, dilation and groups)."""

    base_type = nn.Conv2d

    def _layer_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.base_layer._conv_forward(x, w, self.base_layer.bias)


class QuantLinear(QuantLayer):
    """A fake-quantized ``nn.Linear``."""

    base_type = nn.Linear

    def _layer_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.base_layer.bias)


# the dispatcher: layer type -> its fake-quantized wrapper (subclasses of a type use its wrapper)
QUANT_LAYERS: dict[type[nn.Module], type[QuantLayer]] = {cls.base_type: cls for cls in (QuantConv2d, QuantLinear)}


def quant_layer_class(module: nn.Module) -> type[QuantLayer] | None:
    """The wrapper class for ``module``'s type (the nearest registered base class), or None."""
    return next((QUANT_LAYERS[t] for t in type(module).__mro__ if t in QUANT_LAYERS), None)


def wrap_layer(module: nn.Module, w_bits: int, a_bits: int, index: TimestepIndex | None, role: str = "body",
               symmetric_weights: bool = False) -> QuantLayer:
    """``module`` wrapped by its type's :class:`QuantLayer` subclass; TypeError naming an unsupported type."""
    cls = quant_layer_class(module)
    if cls is None:
        allowed = ", ".join(f"nn.{t.__name__}" for t in QUANT_LAYERS)
        raise TypeError(f"cannot quantize a {type(module).__name__} layer; allowed: {allowed} (and subclasses)")
    return cls(module, w_bits, a_bits, index, role, symmetric_weights)


class QuantAttnProcessor(nn.Module):
    """Attention with fake-quantized matmul inputs (Q, K for QKᵀ; probabilities, V for softmax·V).

    An ``nn.Module`` so that diffusers registers it under ``attn.processor`` and its step sizes are
    part of the U-Net's parameters.
    """

    def __init__(self, bits: int, index: TimestepIndex | None):
        super().__init__()
        self.q = ActQuantizer(bits, index)
        self.k = ActQuantizer(bits, index)
        self.p = ActQuantizer(bits, index)
        self.v = ActQuantizer(bits, index)
        self.quantize = True

    def quantizers(self) -> dict[str, ActQuantizer]:
        return {"q": self.q, "k": self.k, "p": self.p, "v": self.v}

    def _fq(self, name: str, x: torch.Tensor) -> torch.Tensor:
        quant = self.quantizers()[name]
        return quant(x) if self.quantize or quant.observed is not None else x

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = self._fq("q", attn.head_to_batch_dim(query))
        key = self._fq("k", attn.head_to_batch_dim(key))
        value = self._fq("v", attn.head_to_batch_dim(value))
        probs = self._fq("p", attn.get_attention_scores(query, key, attention_mask))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
