"""EfficientDM (QALoRA + TALSQ + distillation from the FP teacher) on a transformer: a checkpoint fine-tuned from
tiny-pixart loads and generates, on simulated and on real int8 kernels, with per-step activation scales."""

import json

import numpy as np

from backend.__main__ import main
from backend.metadata import pipeline_info
from backend.methods.quant.model import get_state
from backend.models import denoiser
from backend.runs.build import build_pipeline
from backend.sampling import generate
from backend.variant import Variant


def test_efficientdm_checkpoint_from_tiny_pixart_loads_and_generates(tmp_path, capsys):
    out = tmp_path / "edm"
    assert main(["finetune", "efficientdm", "--variant", '{"model": "tiny-pixart"}', "--out", str(out),
                 "--w-bits", "4", "--a-bits", "8", "--max-iters", "4", "--train-steps", "3", "--batch-size", "2",
                 "--lora-rank", "4", "--minutes", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["iters"] == 4 and summary["final_loss_is_finite"]
    images = {}
    for kernels in ("simulated", "real"):
        v = Variant.from_dict({"model": "tiny-pixart", "steps": 3,
                               "quant": {"checkpoint": str(out), "kernels": kernels}})
        pipe = build_pipeline(v)
        state = get_state(denoiser(pipe))
        assert state.config.method == "efficientdm" and state.config.weight_bits == 4 and len(state.index) == 3
        assert any(m.a_quant.temporal for m in state.layers.values())  # TALSQ: per-step activation scales
        images[kernels] = generate(pipe, v, ["a red circle"], [0])
        assert np.isfinite(images[kernels]).all()
        info = pipeline_info(pipe).kernels
        assert ("int8" in info) == (kernels == "real") or "simulated" in info


def test_a_flux_checkpoint_selects_one_activation_scale_per_step(tmp_path, capsys):
    """Flux's pipeline calls its transformer with t / 1000: the per-step tables are keyed by the scheduler's
    timesteps (with Flux's shift), and sampling at the trained step count visits each entry once, in order."""
    out = tmp_path / "edm-flux"
    assert main(["finetune", "efficientdm", "--variant", '{"model": "tiny-flux"}', "--out", str(out),
                 "--w-bits", "4", "--a-bits", "4", "--max-iters", "2", "--train-steps", "4", "--batch-size", "1",
                 "--watch-every", "0", "--minutes", "1", "--json"]) == 0
    capsys.readouterr()
    v = Variant.from_dict({"model": "tiny-flux", "steps": 4, "quant": {"checkpoint": str(out)}})
    pipe = build_pipeline(v)
    state = get_state(denoiser(pipe))
    assert len(set(state.index.timesteps)) == 4 and state.index.timesteps[0] > 900
    visited = []
    denoiser(pipe).register_forward_hook(lambda *_: visited.append(state.index.current))
    assert np.isfinite(generate(pipe, v, ["a red circle"], [0])).all()
    assert visited == [0, 1, 2, 3]


def test_a_student_that_quantizes_its_input_layer_trains(tmp_path, capsys):
    """--no-first-last-8bit puts a learned activation step size on the patch embedding's input: the teacher's calls
    (captured under inference_mode) reach autograd as normal tensors."""
    assert main(["finetune", "efficientdm", "--variant", '{"model": "tiny-pixart"}', "--out", str(tmp_path / "e"),
                 "--w-bits", "4", "--a-bits", "8", "--max-iters", "2", "--train-steps", "3", "--batch-size", "1",
                 "--lora-rank", "4", "--minutes", "1", "--watch-every", "0", "--no-first-last-8bit", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["iters"] == 2 and summary["final_loss_is_finite"]
