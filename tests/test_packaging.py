"""``pip install .`` gives a working package in a fresh virtual environment: the ``speedlab`` and ``speedlab-app``
commands, ``import speedlab``, and the embedded model shipped inside the wheel (found with no checkout)."""

import os
import subprocess

import pytest

pytestmark = pytest.mark.packaging


def run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_installed_commands_and_api(installed_speedlab, tmp_path):
    venv = installed_speedlab.parent
    done = run([installed_speedlab / "speedlab", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(cmd in done.stdout for cmd in ("generate", "evaluate", "sweep", "report", "bench"))
    done = run([installed_speedlab / "speedlab-app", "--help"], tmp_path)
    assert done.returncode == 0 and "--store" in done.stdout, done.stderr[-2000:]
    code = ("import speedlab, backend.paths as p; print(speedlab.__file__); print(p.ASSETS); "
            "print(sorted(speedlab.__all__))")
    done = run([installed_speedlab / "python", "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    module, assets, names = done.stdout.splitlines()[-3:]
    assert module.startswith(str(venv)) and assets.startswith(str(venv)), done.stdout  # not the checkout
    assert (os.path.isfile(os.path.join(assets, "shapes-sd", "model_index.json"))
            and os.path.isfile(os.path.join(assets, "evaluators", "judge.safetensors")))
    assert "'load'" in names and "'tune'" in names


def test_facade_names_are_the_backends():
    import speedlab
    from backend.runs.build import build_pipeline
    from backend.variant import Variant

    assert speedlab.Variant is Variant and speedlab.build is build_pipeline
    for name in set(speedlab.__all__) - {"tune"}:
        assert callable(getattr(speedlab, name)), name
    with pytest.raises(AttributeError, match="has no attribute 'nope'; it has Variant"):
        speedlab.nope  # noqa: B018
