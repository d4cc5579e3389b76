"""The Shapes world: seeded scenes of one or two coloured shapes, their captions and renders.

Every scene lives on a 3x3 grid of cells over a 64x64 image. A single object sits in one of
five cells (the corners or the centre) and its caption names the position; two objects sit
in the middle row ("to the left of") or the middle column ("above"). Because the correct
picture for each caption is known, a judge network can score generated images exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {
    "red": (220, 45, 45),
    "green": (45, 175, 65),
    "blue": (50, 90, 230),
    "yellow": (240, 215, 50),
    "purple": (155, 65, 200),
    "cyan": (50, 205, 215),
}
SIZES = {"small": 14, "large": 26}
POSITIONS = {  # caption phrase -> (row, col) grid cell
    "at the top left": (0, 0),
    "at the top right": (0, 2),
    "in the center": (1, 1),
    "at the bottom left": (2, 0),
    "at the bottom right": (2, 2),
}
RELATIONS = {  # phrase -> cells of (first object, second object)
    "to the left of": ((1, 0), (1, 2)),
    "above": ((0, 1), (2, 1)),
}
CELL_CENTERS = (15, 32, 49)
N_CELLS = 9
# (shape, colour) pairs never shown in training: the compositional split tests them.
HELD_OUT_PAIRS = frozenset(
    {("triangle", "purple"), ("circle", "cyan"), ("cross", "yellow"), ("square", "green"), ("diamond", "red")}
)
JITTER = 2


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    cell: tuple[int, int]

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"

    @property
    def cell_index(self) -> int:
        """Index of the object's cell in row-major order (the judge's per-cell outputs)."""
        return self.cell[0] * 3 + self.cell[1]


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    relation: str | None = None

    @property
    def caption(self) -> str:
        if len(self.objects) == 1:
            obj = self.objects[0]
            position = next(p for p, c in POSITIONS.items() if c == obj.cell)
            return f"{obj.phrase()} {position}"
        first, second = self.objects
        return f"{first.phrase()} {self.relation} {second.phrase()}"

    def cell_labels(self) -> dict[str, np.ndarray]:
        """Per-cell targets: shape (0 = empty, 1.. = SHAPES), colour and size indices (-1 where empty)."""
        shape = np.zeros(N_CELLS, dtype=np.int64)
        color = np.full(N_CELLS, -1, dtype=np.int64)
        size = np.full(N_CELLS, -1, dtype=np.int64)
        for obj in self.objects:
            k = obj.cell_index
            shape[k] = SHAPES.index(obj.shape) + 1
            color[k] = list(COLORS).index(obj.color)
            size[k] = list(SIZES).index(obj.size)
        return {"shape": shape, "color": color, "size": size}


def _random_attrs(rng: random.Random, split: str) -> tuple[str, str, str]:
    while True:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        held_out = (shape, color) in HELD_OUT_PAIRS
        if split == "any" or held_out == (split == "compositional"):
            return shape, color, rng.choice(list(SIZES))


def random_scene(rng: random.Random, n_objects: int | None = None, split: str = "train") -> Scene:
    """A random scene; split "train" never uses held-out pairs, "compositional" uses at least one, "any" mixes."""
    n = n_objects or rng.choice((1, 2))
    if n == 1:
        shape, color, size = _random_attrs(rng, split)
        return Scene((ShapeObject(shape, color, size, rng.choice(list(POSITIONS.values()))),))
    relation = rng.choice(list(RELATIONS))
    cells = RELATIONS[relation]
    if split == "compositional":
        held = rng.randrange(2)
        attrs = [_random_attrs(rng, "compositional" if i == held else "any") for i in range(2)]
    else:
        attrs = [_random_attrs(rng, split) for _ in range(2)]
    objs = tuple(ShapeObject(s, c, z, cell) for (s, c, z), cell in zip(attrs, cells))
    return Scene(objs, relation)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        w = r / 3
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
            (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
            (cx - r, cy - w), (cx - w, cy - w),
        ]
    raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")


def render(scene: Scene, rng: random.Random, supersample: int = 4) -> np.ndarray:
    """Draw a scene as a uint8 (64, 64, 3) array; position jitter and background grey come from rng."""
    s = supersample
    grey = rng.randint(70, 110)
    img = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        cx = CELL_CENTERS[obj.cell[1]] + rng.uniform(-JITTER, JITTER)
        cy = CELL_CENTERS[obj.cell[0]] + rng.uniform(-JITTER, JITTER)
        r = SIZES[obj.size] / 2
        color = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=color)
        else:
            draw.polygon([(x * s, y * s) for x, y in _polygon(obj.shape, cx, cy, r)], fill=color)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def sample_batch(
    n: int, seed: int, split: str = "train", n_objects: int | None = None
) -> tuple[np.ndarray, list[Scene]]:
    """n rendered scenes (uint8, N×64×64×3) and their Scene objects, fully determined by seed."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, n_objects, split) for _ in range(n)]
    images = np.stack([render(sc, rng) for sc in scenes])
    return images, scenes


def to_tensor_range(images: np.ndarray):
    """uint8 N×H×W×3 -> float tensor N×3×H×W in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
