"""int8 by the peer libraries: torchao, optimum-quanto and torch's ``quantize_dynamic``, as one method.

``apply(pipe, PeerInt8Config(backend="torchao"))`` quantizes the pipeline's denoiser (a private deep copy) in place,
then measures which operators really run in int8 on this CPU during one denoiser evaluation
(:mod:`backend.methods.peer_int8.report`) and records the summary in ``pipeline_info(pipe).kernels``.
"""

from __future__ import annotations

from backend.metadata import pipeline_info
from backend.methods.peer_int8.config import BACKENDS, PeerInt8Config
from backend.methods.peer_int8.report import OpReport, measure_ops, sample
from backend.models import denoiser

__all__ = ["BACKENDS", "OpReport", "PeerInt8Config", "apply", "denoiser", "measure_ops"]

PACKAGES = {"torchao": "torchao==0.18.0", "quanto": "optimum-quanto==0.2.7"}



def _need(backend: str) -> None:
    module = {"torchao": "torchao.quantization", "quanto": "optimum.quanto"}.get(backend)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        raise ValueError(f"peer_int8.backend {backend!r}: the package is not installed; install it: "
                         f"pip install {PACKAGES[backend]}") from None


def _calibrate_quanto(pipe, config: PeerInt8Config) -> None:
    from optimum.quanto import Calibration

    from backend.methods.quant.calibrate import default_prompts

    with Calibration(momentum=0.9):
        sample(pipe, default_prompts(pipe, config.calib_prompts), config.calib_steps)


def apply(pipe, config: PeerInt8Config | dict | None = None) -> OpReport:
    """Quantize the denoiser by ``config.backend`` (in place) and report the operators that ran."""
    if not isinstance(config, PeerInt8Config):
        config = PeerInt8Config.from_dict(config)
    _need(config.backend)
    model = denoiser(pipe)
    if config.backend == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig())
    elif config.backend == "quanto":
        from optimum.quanto import freeze, qint8, quantize

        quantize(model, weights=qint8, activations=qint8)
        _calibrate_quanto(pipe, config)
        freeze(model)
    else:
        import torch

        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    model.eval()
    report = measure_ops(pipe, model)
    pipeline_info(pipe).kernels = f"{config.backend}: {report.summary()}"
    return report
