"""Images the workbench shows: nearest-neighbour upscaling, the before/after comparison (two layers in one box),
the difference map, and a labelled grid PNG of every column (prompt, seed, per-column name and metrics)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE = 256  # small models' 64×64 images are drawn at least this large, pixel for pixel


def upscale(image: np.ndarray | None, min_side: int = MIN_SIDE) -> np.ndarray | None:
    """H×W×3 uint8 enlarged by a whole factor (nearest neighbour) until its shorter side is ≥ min_side."""
    if image is None:
        return None
    factor = max(1, -(-min_side // min(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def difference(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """|a − b| per pixel (max over channels), amplified by ``gain``, as a grey uint8 image."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1).astype(np.float32) * gain
    return np.repeat(np.clip(d, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _data_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# the slider moves the top layer's clip edge (gr.HTML's js_on_load; event delegation survives re-renders)
SLIDER_JS = """
element.addEventListener('input', (e) => {
  if (!e.target.classList.contains('ba-range')) return;
  const box = e.target.closest('.ba-wrap').querySelector('.ba-top');
  if (box) box.style.clipPath = `inset(0 ${100 - Number(e.target.value)}% 0 0)`;
});
"""
SLIDER_CSS = """
.ba-wrap{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.ba-box{position:relative;overflow:hidden}
.ba-box img{position:absolute;left:0;top:0;width:100%;height:100%;image-rendering:pixelated;margin:0;max-width:none}
.ba-range{display:block;width:100%}
.ba-caption{font-size:13px;color:var(--body-text-color-subdued,#555)}
"""


def before_after_html(before: np.ndarray | None, after: np.ndarray | None, before_name: str = "before",
                      after_name: str = "after", show_difference: bool = False, side: int = 320) -> str:
    """Both images as two layers of one box of the same size (the top one, ``before``, clipped at the slider),
    and optionally the difference map beside it."""
    if before is None or after is None:
        return '<div class="ba-wrap"><p class="ba-caption">Generate to compare two columns here.</p></div>'
    if before.shape != after.shape:
        return (f'<div class="ba-wrap"><p class="ba-caption">{html.escape(before_name)} and {html.escape(after_name)} '
                'have different sizes; pick two columns of the same size.</p></div>')
    h, w = before.shape[:2]
    scale = side / max(h, w)
    width, height = round(w * scale), round(h * scale)
    box = f'style="width:{width}px;height:{height}px"'
    parts = [f'<div class="ba-pane" style="width:{width}px">'
             f'<div class="ba-box" {box}>'
             f'<img class="ba-bottom" alt="{html.escape(after_name)}" src="{_data_uri(upscale(after))}">'
             f'<img class="ba-top" alt="{html.escape(before_name)}" style="clip-path:inset(0 50% 0 0)" '
             f'src="{_data_uri(upscale(before))}"></div>'
             '<input class="ba-range" type="range" min="0" max="100" value="50" aria-label="before / after">'
             f'<div class="ba-caption">left: {html.escape(before_name)} · right: {html.escape(after_name)}</div></div>']
    if show_difference:
        diff = upscale(difference(before, after))
        parts.append(f'<div class="ba-pane" style="width:{width}px"><div class="ba-box" {box}>'
                     f'<img class="ba-diff" alt="difference" src="{_data_uri(diff)}"></div>'
                     f'<div class="ba-caption">|{html.escape(after_name)} − {html.escape(before_name)}| × 4 '
                     f'(max {int(np.abs(before.astype(int) - after.astype(int)).max())} of 255)</div></div>')
    return '<div class="ba-wrap">' + "".join(parts) + "</div>"


def _font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def grid_png(columns: list[dict], prompt: str, seed: int, out: str | Path, side: int = MIN_SIDE) -> Path:
    """One PNG: a header (prompt, seed) over one cell per column (its name, image, metrics line or error).

    columns: dicts with name, image (H×W×3 uint8 or None) and caption (one line of metrics, or the error).
    """
    if not columns:
        raise ValueError("nothing to put in a grid: generate first")
    pad, font, small = 12, _font(16), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [_wrap(probe, c.get("caption") or "", small, side) for c in columns]
    header = _wrap(probe, f"{prompt}  ·  seed {seed}", font, len(columns) * (side + pad) - pad)
    cap_h = max(len(c) for c in captions) * 17 + 4
    head_h = len(header) * 21 + pad
    width = pad + len(columns) * (side + pad)
    height = pad + head_h + 22 + side + 6 + cap_h + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for line in header:
        draw.text((pad, y), line, fill="black", font=font)
        y += 21
    y += pad
    for k, col in enumerate(columns):
        x = pad + k * (side + pad)
        draw.text((x, y), str(col["name"]), fill="black", font=font)
        if col.get("image") is not None:
            img = Image.fromarray(col["image"]).resize((side, side), Image.NEAREST)
            canvas.paste(img, (x, y + 22))
        else:
            draw.rectangle((x, y + 22, x + side - 1, y + 22 + side - 1), outline="#bbbbbb")
        for j, line in enumerate(captions[k]):
            draw.text((x, y + 22 + side + 6 + 17 * j), line, fill="#333333", font=small)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    canvas.save(tmp, format="PNG")
    tmp.replace(out)
    return out
