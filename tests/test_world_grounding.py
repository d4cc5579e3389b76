"""The cross-attention grounding loss used to train shapes-sd (backend/world/grounding.py)."""

import torch

from backend.world import architecture as arch
from backend.world.grounding import CrossAttentionRecorder, grounding_loss, object_masks

TWO = "a small red circle to the left of a large blue square"
ONE = "a large green cross at the top left"


def test_object_masks_mark_each_objects_cell_and_words():
    masks, word_object = object_masks([TWO, ONE])
    assert word_object.tolist() == [[-1, 0, 0, 0, -1, -1, -1, -1, -1, 1, 1, 1],
                                    [-1, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1]]
    left, right = masks[0, 0], masks[0, 1]
    assert left[:, :8].sum() > 0 and left[:, 8:].sum() == 0  # "to the left of": first object in the left column
    assert right[:, 8:].sum() > 0 and right[:, :8].sum() == 0
    assert right.sum() > left.sum()  # large vs small
    assert masks[1, 0][:8, :8].sum() == masks[1, 0].sum() and masks[1, 1].sum() == 0  # top left; no second object


def _maps_looking_at(masks: torch.Tensor, word_object: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 1 head, side², T) attention where each attribute word attends only inside its object's cell."""
    cells = torch.nn.functional.adaptive_avg_pool2d(masks, side).flatten(2)  # (B, 2, HW)
    b, n_words = word_object.shape
    probs = torch.zeros(b, side * side, 16)
    probs[:, :, 0] = 1e-3  # the rest of each query's attention goes to <bos>
    for i in range(b):
        for j in range(n_words):
            if word_object[i, j] >= 0:
                probs[i, :, 1 + j] = (cells[i, word_object[i, j]] >= 0.999).float()
    return (probs / probs.sum(-1, keepdim=True))[:, None]


def test_grounding_loss_is_zero_when_words_look_inside_their_cells_and_high_when_swapped():
    masks, word_object = object_masks([TWO, ONE])
    right = [_maps_looking_at(masks, word_object, s) for s in (16, 8)]
    swapped_masks = masks.clone()
    swapped_masks[0] = masks[0].flip(0)
    swapped = [_maps_looking_at(swapped_masks, word_object, s) for s in (16, 8)]
    assert grounding_loss(right, masks, word_object) < 1e-3
    assert grounding_loss(swapped + right, masks, word_object) > 0.2
    assert grounding_loss(right, masks, torch.full_like(word_object, -1)) == 0  # all prompts dropped (CFG)


def test_recorder_keeps_the_unets_output_and_records_every_cross_attention():
    torch.manual_seed(0)
    unet, text = arch.build_unet().eval(), arch.build_text_encoder().eval()
    ids = arch.build_tokenizer()([TWO, ONE], padding="max_length", max_length=arch.MAX_TOKENS,
                                 return_tensors="pt").input_ids
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 20])
    with torch.no_grad():
        cond = text(ids)[0]
        before = unet(x, t, cond).sample
        maps = CrossAttentionRecorder.install(unet)
        after = unet(x, t, cond).sample
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    n_cross = sum(name.endswith("attn2.processor") for name in unet.attn_processors)
    assert len(maps) == n_cross > 0
    assert {m.shape[2] for m in maps} >= {256, 64}
    torch.testing.assert_close(maps[0].sum(-1), torch.ones_like(maps[0][..., 0]))
