"""notebooks/tour.ipynb runs end to end (nbclient) at tiny sizes, every method included (no fallbacks), in a kernel
of the installed package (``pip install .`` in a fresh environment: ``import speedlab`` with no path hacks)."""

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tour.ipynb"


@pytest.mark.packaging
def test_tour_notebook_executes(monkeypatch, installed_speedlab, tmp_path):
    spec = tmp_path / "kernels" / "speedlab-installed" / "kernel.json"  # a kernel on the fresh environment's python
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [str(installed_speedlab / "python"), "-m", "ipykernel_launcher", "-f",
                                         "{connection_file}"], "display_name": "speedlab (installed)",
                                "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    for key, value in {"TOUR_MODEL": "tiny-arch", "TOUR_PROMPTS": "2", "TOUR_STEPS": "2", "TOUR_DISTILL_STEPS": "2",
                       "TOUR_REPEATS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                       "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="speedlab-installed",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(o.get("text", "") or json.dumps(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "model tiny-arch" in text
    assert "DeepCache N=3: speedup" in text and "95% interval" in text
    assert "PTQ W8A8" in text
    assert "LCM 4 steps" in text
    assert "variants measured, failed: {}" in text
    assert "report.html" in text
