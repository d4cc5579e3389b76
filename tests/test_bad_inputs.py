"""Every bad input of the hardening probe, through the CLI in-process: exit 2, exactly one line on stderr naming
the problem, no traceback, and nothing written (the work folder is byte-for-byte as before)."""

import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch

from backend.__main__ import main

TINY = json.dumps({"model": "tiny-arch", "steps": 2})
FAST_QUANT = ["--max-iters", "2", "--batch-size", "1", "--train-steps", "2"]
FAST_LCD = ["--max-steps", "2", "--batch-size", "2", "--minutes", "1", "--num-ddim-timesteps", "4"]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Inputs shared by the cases: a file, a binary file, a foreign SQLite file, broken models and checkpoints."""
    from backend.methods.consistency.model import base_signature, save_full
    from backend.models import build_random_pipeline

    root = tmp_path_factory.mktemp("inputs")
    (root / "file.txt").write_text("a prompt\n")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "notckpt").mkdir()
    (root / "notckpt" / "notes.txt").write_text("mine")
    (root / "folder.png").mkdir()
    foreign = root / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "results.db")
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()

    pipe = build_random_pipeline("tiny-arch")
    pipe.save_pretrained(root / "pickled", safe_serialization=False)
    pipe.save_pretrained(root / "truncated")
    _truncate(root / "truncated" / "unet" / "diffusion_pytorch_model.safetensors")
    meta = {"kind": "full", "base_model": "tiny-arch", "base_signature": base_signature(pipe.unet),
            "original_inference_steps": 4, "max_steps": 4, "guidance": 1.0}
    save_full(pipe, pipe.unet, root / "student", meta)
    _truncate(root / "student" / "unet" / "diffusion_pytorch_model.safetensors")
    with torch.no_grad():  # another model of the same layout (different weights): not the quant base
        for p in pipe.unet.parameters():
            p.add_(0.01)
    pipe.save_pretrained(root / "other-model")
    return root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def quant_ckpt(tmp_path_factory) -> Path:
    """An EfficientDM fine-tune checkpoint of tiny-arch (two iterations), to resume from."""
    from backend.methods.quant.config import FinetuneConfig
    from backend.methods.quant.train import finetune
    from backend.models import load_pipeline

    out = tmp_path_factory.mktemp("quant") / "ckpt"
    ft = FinetuneConfig.from_dict({"max_iters": 2, "batch_size": 1, "train_steps": 2})
    finetune(load_pipeline("tiny-arch"), ft, out, quant=ft.quant_config(calib_prompts=1, calib_steps=2,
                                                                          calib_samples=2))
    return out


def spec(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def variant_with(**over) -> str:
    return json.dumps({"model": "tiny-arch", "steps": 2, **over})


def made_dir(path: Path) -> Path:
    path.mkdir()
    return path


# (id, argv given the inputs folder w and the output folder o, a fragment the message must hold)
CASES = [
    ("argparse-missing", lambda w, o: ["generate", "--prompt", "a"], "--variant, --out"),
    ("argparse-bad-int", lambda w, o: ["evaluate", "--variant", TINY, "--n", "x"], "--n"),
    ("generate-out-under-file", lambda w, o: ["generate", "--variant", TINY, "--prompt", "a", "--out",
                                              str(w / "file.txt" / "x.png")], "is a file"),
    ("generate-out-suffix", lambda w, o: ["generate", "--variant", TINY, "--prompt", "a", "--out", str(o / "x.txt")],
     ".png"),
    ("generate-out-is-folder", lambda w, o: ["generate", "--variant", TINY, "--prompt", "a", "--out",
                                             str(w / "folder.png")], "is a folder"),
    ("guidance-nan", lambda w, o: ["generate", "--variant", '{"model": "tiny-arch", "guidance": NaN}', "--prompt",
                                   "a", "--out", str(o / "x.png")], "guidance: nan"),
    ("guidance-infinity", lambda w, o: ["generate", "--variant", '{"model": "tiny-arch", "guidance": Infinity}',
                                        "--prompt", "a", "--out", str(o / "x.png")], "guidance: inf"),
    ("steps-1e7", lambda w, o: ["generate", "--variant", variant_with(steps=10**7), "--prompt", "a", "--out",
                                str(o / "x.png")], "steps: 10000000"),
    ("height-1e5", lambda w, o: ["generate", "--variant", variant_with(height=100000), "--prompt", "a", "--out",
                                 str(o / "x.png")], "height: 100000"),
    ("method-param-inf", lambda w, o: ["generate", "--variant", '{"model": "tiny-arch", "deepcache": {"interval": '
                                       '1e999}}', "--prompt", "a", "--out", str(o / "x.png")], "deepcache.interval"),
    ("variant-json-array", lambda w, o: ["generate", "--variant", "[1,2]", "--prompt", "a", "--out", str(o / "x.png")],
     "JSON array"),
    ("variant-json-number", lambda w, o: ["generate", "--variant", "42", "--prompt", "a", "--out", str(o / "x.png")],
     "JSON number"),
    ("variant-binary-file", lambda w, o: ["generate", "--variant", str(w / "binary.bin"), "--prompt", "a", "--out",
                                          str(o / "x.png")], "binary.bin"),
    ("variant-deep-nesting", lambda w, o: ["generate", "--variant", "[" * 100_000, "--prompt", "a", "--out",
                                           str(o / "x.png")], "nested"),
    ("seed-2**70", lambda w, o: ["generate", "--variant", TINY, "--prompt", "a", "--out", str(o / "x.png"), "--seed",
                                 str(2**70)], str(2**70)),
    ("seed-not-a-number", lambda w, o: ["generate", "--variant", TINY, "--prompt", "a", "--out", str(o / "x.png"),
                                        "--seed", "2**70"], "'2**70'"),
    ("model-pickle-only", lambda w, o: ["generate", "--variant", variant_with(model=str(w / "pickled")), "--prompt",
                                        "a", "--out", str(o / "x.png")], "--allow-pickle"),
    ("model-truncated", lambda w, o: ["generate", "--variant", variant_with(model=str(w / "truncated")), "--prompt",
                                      "a", "--out", str(o / "x.png")], "diffusion_pytorch_model.safetensors"),
    ("student-truncated", lambda w, o: ["generate", "--variant", variant_with(
        scheduler="lcm", consistency={"checkpoint": str(w / "student")}), "--prompt", "a", "--out", str(o / "x.png")],
     "student"),
    ("efficientdm-out-not-ckpt", lambda w, o: ["finetune", "efficientdm", "--variant", TINY, "--out",
                                               str(w / "notckpt"), *FAST_QUANT], "not a quant checkpoint"),
    ("efficientdm-out-under-file", lambda w, o: ["finetune", "efficientdm", "--variant", TINY, "--out",
                                                 str(w / "file.txt" / "ckpt"), *FAST_QUANT], "is a file"),
    ("efficientdm-minutes-nan", lambda w, o: ["finetune", "efficientdm", "--variant", TINY, "--out", str(o / "c"),
                                              "--minutes", "nan"], "finite"),
    ("efficientdm-open-range", lambda w, o: ["finetune", "efficientdm", "--variant", TINY, "--out", str(o / "c"),
                                             "--lora-lr-scale", "-1"], "allowed: ≥ 0"),
    ("efficientdm-prompts-binary", lambda w, o: ["finetune", "efficientdm", "--variant", TINY, "--out", str(o / "c"),
                                                 "--prompts", str(w / "binary.bin")], "binary.bin"),
    ("lcd-out-under-file", lambda w, o: ["finetune", "lcd", "--variant", TINY, "--out", str(w / "file.txt" / "s"),
                                         *FAST_LCD], "is a file"),
    ("lcd-checkpoint-every-0", lambda w, o: ["finetune", "lcd", "--variant", TINY, "--out", str(o / "s"),
                                             "--checkpoint-every", "0", *FAST_LCD], "checkpoint_every_s"),
    ("lcd-seed-huge", lambda w, o: ["finetune", "lcd", "--variant", TINY, "--out", str(o / "s"), "--seed",
                                    str(2**70), *FAST_LCD], "seed"),
    ("sweep-out-under-file", lambda w, o: ["sweep", spec(o / "s.json", {"base": {"model": "tiny-arch", "steps": 2},
                                                                       "grid": {"steps": [1]}, "prompts": ["a"]}),
                                           "--out", str(w / "file.txt" / "run")], "is a file"),
    ("sweep-spec-binary", lambda w, o: ["sweep", str(w / "binary.bin"), "--out", str(o / "run")], "binary.bin"),
    ("sweep-baseline-model-missing", lambda w, o: ["sweep", spec(o / "s.json", {
        "base": {"model": str(o / "no-such-model"), "steps": 2}, "grid": {"steps": [1]}, "prompts": ["a"]}),
        "--out", str(o / "run")], "no-such-model"),
    ("sweep-seed-huge", lambda w, o: ["sweep", spec(o / "s.json", {"base": {"model": "tiny-arch"}, "seed": 2**70,
                                                                  "grid": {"steps": [1]}, "prompts": ["a"]}),
                                      "--out", str(o / "run")], "seed"),
    ("sweep-into-foreign-sqlite", lambda w, o: ["sweep", spec(o / "s.json", {"base": {"model": "tiny-arch"},
                                                                            "grid": {"steps": [1]}, "prompts": ["a"]}),
                                                "--out", str(w / "foreign")], "another program"),
    ("report-foreign-sqlite", lambda w, o: ["report", str(w / "foreign"), "--out", str(o / "r.html")],
     "another program"),
    ("report-out-under-file", lambda w, o: ["report", str(w / "foreign"), "--out", str(w / "file.txt" / "r.html")],
     "is a file"),
    ("bench-lcm-steps", lambda w, o: ["bench", "lcm", "--steps", "a,b"], "'a'"),
    # issue 31: silent input changes are refused, outputs are checked before any work
    ("evaluate-seed-plus-i-past-2**53", lambda w, o: ["evaluate", "--variant", TINY, "--seed", str(2**53 - 1),
                                                      "--n", "2"], "--seed 9007199254740991 with --n 2"),
    ("evaluate-n-0", lambda w, o: ["evaluate", "--variant", TINY, "--n", "0"], "--n 0"),
    ("steps-0", lambda w, o: ["generate", "--variant", variant_with(steps=0), "--prompt", "a", "--out",
                              str(o / "x.png")], "steps: 0"),
    ("steps-100000", lambda w, o: ["generate", "--variant", variant_with(steps=100000), "--prompt", "a", "--out",
                                   str(o / "x.png")], "steps: 100000"),
    ("bench-quant-cost-resolution-0", lambda w, o: ["bench", "quant", "--cost", "--resolution", "0"],
     "--resolution 0"),
    ("bench-quant-grid-html-under-file", lambda w, o: ["bench", "quant", "--grid", "--html",
                                                       str(w / "file.txt" / "grid.html")], "is a file"),
    ("report-zip-is-a-folder", lambda w, o: ["report", str(w / "foreign"), "--out", str(o / "r.html")]
     if made_dir(o / "r.zip") else [], "r.zip"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, work, tmp_path, capsys):
    _, argv_of, fragment = case
    argv = argv_of(work, tmp_path)
    before_work, before_out = snapshot(work), snapshot(tmp_path)
    rc, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "None" not in lines[0]
    if fragment:
        assert fragment in lines[0], lines[0]
    assert snapshot(work) == before_work, "an input was changed"
    assert snapshot(tmp_path) == before_out, "something was written"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command", ["generate", "sweep", "report", "efficientdm", "lcd"])
def test_unwritable_output_folder(command, work, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    sweep_spec = spec(tmp_path / "s.json", {"base": {"model": "tiny-arch", "steps": 2}, "grid": {"steps": [1]},
                                            "prompts": ["a"]})
    argv = {"generate": ["generate", "--variant", TINY, "--prompt", "a", "--out", str(locked / "x.png")],
            "sweep": ["sweep", sweep_spec, "--out", str(locked / "run")],
            "report": ["report", str(work / "foreign"), "--out", str(locked / "r.html")],
            "efficientdm": ["finetune", "efficientdm", "--variant", TINY, "--out", str(locked / "c"), *FAST_QUANT],
            "lcd": ["finetune", "lcd", "--variant", TINY, "--out", str(locked / "s"), *FAST_LCD]}[command]
    try:
        rc, _, err = run_cli(argv, capsys)
    finally:
        locked.chmod(0o755)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not writable" in err, err
    assert not any(locked.iterdir())


def test_efficientdm_resume_into_another_models_checkpoint(work, quant_ckpt, capsys):
    before = snapshot(quant_ckpt)
    rc, _, err = run_cli(["finetune", "efficientdm", "--variant", variant_with(model=str(work / "other-model")),
                          "--out", str(quant_ckpt), *FAST_QUANT, "--json"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "fingerprint" in err, err
    assert snapshot(quant_ckpt) == before


def test_lcd_truncated_training_state(tmp_path, capsys):
    from backend.__main__ import build_parser
    from backend.methods.consistency.cli import config_from_args

    out = tmp_path / "student"
    argv = ["finetune", "lcd", "--variant", TINY, "--out", str(out), *FAST_LCD]
    state = tmp_path / "student.partial" / "state-000000001-0"
    state.mkdir(parents=True)
    cfg = config_from_args(build_parser().parse_args(argv))
    (state / "state.json").write_text(json.dumps({"step": 1, "elapsed": 1.0, "config": cfg.to_dict(),
                                                  "opt_groups": []}))
    (state / "state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    before = snapshot(tmp_path)
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "state.safetensors" in err, err
    assert snapshot(tmp_path) == before


def test_allow_pickle_loads_pickled_weights(work, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc, _, err = run_cli(["--allow-pickle", "generate", "--variant", variant_with(model=str(work / "pickled")),
                          "--prompt", "a", "--out", str(out), "--json"], capsys)
    assert rc == 0 and out.is_file(), err


def test_report_reads_images_only_inside_the_run(tmp_path):
    """A crafted image row pointing outside the run directory is neither inlined nor zipped."""
    import zipfile

    import numpy as np

    from backend.reports.export import export_report
    from backend.runs.store import Store

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-CONTENT")
    rundir = tmp_path / "run"
    with Store(rundir) as store:
        store.create_run("r1", [{"name": "base", "model": "tiny-arch"}], ["a"], [0], {}, {})
        assert store.claim("r1", 0)
        store.save_variant("r1", 0, np.zeros((1, 8, 8, 3), np.float32), ["a"], [0], {"latency_s": 1.0})
        store.conn.execute("UPDATE images SET path='../secret.png'")
    wal = set(rundir.iterdir())
    paths = export_report(rundir, tmp_path / "out" / "report.html")
    assert b"SECRET" not in paths.html.read_bytes() and "U0VDUkVU" not in paths.html.read_text()
    with zipfile.ZipFile(paths.zip) as z:
        assert not any(name.endswith("secret.png") for name in z.namelist())
    assert set(rundir.iterdir()) == wal  # the report opened the store read-only


@pytest.mark.parametrize("argv, fragment", [
    (["--port", "99999"], "--port 99999 is out of range; allowed: 1 to 65535"),
    (["--store", "FILE"], "exists and is not a folder"),
    (["--store", "READONLY/store"], "is not writable"),
])
def test_app_bad_arguments(argv, fragment, work, tmp_path, monkeypatch, capsys):
    """python -m app: one line and exit 2 before anything starts (a read-only mount: os.access says so)."""
    import backend.paths
    from app.__main__ import main as app_main

    readonly = made_dir(tmp_path / "ro")
    real_access = os.access
    monkeypatch.setattr(backend.paths.os, "access", lambda p, mode: Path(p) != readonly and real_access(p, mode))
    argv = [a.replace("FILE", str(work / "file.txt")).replace("READONLY", str(readonly)) for a in argv]
    rc = app_main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not any(readonly.iterdir())


def test_unknown_finetune_setting_is_refused(tmp_path):
    """A setting no fine-tune declares (a preset's typo) is named, never dropped."""
    from backend.runs import knobs
    from backend.runs.jobs import JobService

    jobs = JobService(tmp_path)
    with pytest.raises(ValueError, match="unknown key 'minutez'"):
        jobs.validate("lcd", "tiny-arch", {"minutes": 1.0, "minutez": 5})
    for kind in knobs.finetune_kinds():  # every preset's keys are declared settings of its kind
        for name in knobs.PRESET_NAMES:
            jobs.validate(kind, "tiny-arch", knobs.preset(kind, name))
