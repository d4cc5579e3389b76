"""Find my stack (backend/tune): the space comes from the registry, the search finds the grid's best on a small
space, a killed search resumes without recomputing, the confirmation never reuses a search seed or prompt."""

import dataclasses
import json
import time

import pytest

from backend.core import JobCancelled, JobControl
from backend.methods import registry
from backend.methods.params import MethodConfig, param


@dataclasses.dataclass
class SlowConfig(MethodConfig):
    section = "slow"

    level: int = param(1, "sleep level × 50 ms per U-Net call", minimum=1, maximum=3)


def apply_slow(pipe, config: SlowConfig) -> None:
    pipe.unet.register_forward_hook(lambda module, args, out: time.sleep(0.05 * config.level))


@pytest.fixture
def slow():
    registry.register(registry.Method("slow", "Slow toy", SlowConfig, apply_slow, order=40, unet_access="hooks"))
    yield
    registry.unregister("slow")


SPACE = {"methods": ["deepcache", "slow"], "values": {"deepcache.interval": [2], "slow.level": [1, 3]},
         "fixed": {"steps": 2}}


def _plan(**kw):
    from backend.tune.search import Plan

    return Plan(**{"screen_n": 2, "screen_repeats": 1, "promote_n": 2, "promote_repeats": 2, "promote_k": 2,
                   "confirm_n": 2, "confirm_repeats": 1, "confirm_k": 2, **kw})


def test_the_space_lists_every_registered_method_and_its_knobs(slow):
    from backend.tune.space import build_space

    space = build_space("tiny-arch")
    assert set(space.methods) == {m.section for m in registry.methods() if m.searched} and "slow" in space.methods
    assert "compile" not in space.methods  # minutes of compiling: searched only when --space names it
    for m in registry.methods():
        if m.searched:
            declared = {p["name"] for p in m.config_class().describe() if p.get("ui", True)}
            assert set(space.methods[m.section]) == declared
    assert space.methods["slow"]["level"] == [1, 2]  # a ladder up to twice the default, inside the bounds
    assert space.methods["deepcache"]["schedule"] == ["uniform", "nonuniform", "explicit"]
    assert {"steps", "scheduler"} <= set(space.top)
    for ckpt in space.methods["quant"]["checkpoint"][1:]:  # checkpoints found in assets/ carry their own settings
        assert space.variant({"quant.checkpoint": ckpt, "quant.weight_bits": 3})["quant"] == {"checkpoint": ckpt}
    unet, dit = build_space("tiny-arch", family="unet"), build_space("tiny-pixart", family="pixart")
    assert "branch" in unet.methods["deepcache"] and "first_blocks" not in unet.methods["deepcache"]
    assert "first_blocks" in dit.methods["deepcache"] and "branch" not in dit.methods["deepcache"]
    assert "tome" in unet.methods and "tome" not in dit.methods  # a method the family refuses is left out
    small = build_space("tiny-arch", SPACE)
    assert small.size() == 5 and len(small.enumerate()) == 5  # (off, dc2) x (off, slow1, slow3) - the baseline


@pytest.mark.parametrize("spec, match", [
    ({"methods": [], "values": {"steps": [50]}}, "empty"),
    ({"methods": ["nope"]}, "'nope' is not a method"),
    ({"methods": ["deepcache"], "values": {"deepcache.interval": [0]}}, "out of range"),
    ({"methods": ["deepcache"], "values": {"quant.weight_bits": [4]}}, "methods leaves out"),
    ({"values": {"steps": [2]}, "fixed": {"steps": 2}}, "both in values and fixed"),
])
def test_an_empty_or_contradictory_space_is_one_line(spec, match):
    from backend.tune.space import build_space

    with pytest.raises(ValueError, match=match):
        build_space("tiny-arch", spec)


def test_search_finds_the_grid_best_resumes_without_recomputing_and_confirms_on_fresh_seeds(slow, tmp_path):
    from backend.metrics.quality import psnr_ssim
    from backend.runs.store import Store
    from backend.tune.search import Evaluator, Objective, Tuner, prepare, run_tune

    rundir = tmp_path / "tune"
    cancel = JobControl(cancel=__import__("threading").Event())

    def kill_after_screening(event):
        if event["stage"] == "screen":
            cancel.cancel.set()

    with pytest.raises(JobCancelled):
        run_tune("tiny-arch", "hard", 0, rundir, SPACE, "psnr", plan=_plan(), job=cancel,
                 on_event=kill_after_screening)
    with Store(rundir) as st:
        before = {(r["id"], v["idx"]): v["finished"] for r in st.runs() for v in st.variants(r["id"])
                  if v["status"] == "done"}
    assert len(before) >= 6  # the screening's baseline and five stacks were stored before the kill

    result = run_tune("tiny-arch", "hard", 0, rundir, SPACE, "psnr", plan=_plan())
    evaluations = {}
    with Store(rundir) as st:
        runs = st.runs()
        for r in runs:
            for v in st.variants(r["id"]):
                if v["status"] != "done":
                    continue
                assert before.get((r["id"], v["idx"]), v["finished"]) == v["finished"]  # nothing redone
                if v["idx"] > 0:
                    key = (json.dumps(v["config"], sort_keys=True), json.dumps(r["prompts"]), json.dumps(r["seeds"]),
                           r["settings"]["repeats"])
                    assert key not in evaluations, "an evaluation was computed twice"
                    evaluations[key] = v
    assert result["tried"]["reused_from_store"] >= 5

    # the confirmation set shares no seed and no prompt with the search
    confirm = [r for r in runs if r["name"] == "tune-confirm"]
    search = [r for r in runs if r["name"] != "tune-confirm"]
    assert confirm and search
    assert not {s for r in confirm for s in r["seeds"]} & {s for r in search for s in r["seeds"]}
    assert not {p for r in confirm for p in r["prompts"]} & {p for r in search for p in r["prompts"]}
    assert result["confirmation"]["seeds_disjoint_from_search"] and result["confirmation"]["n"] == 2
    with Store(rundir) as st:  # the confirmed quality is the paired metric of the stored images
        at = next(v["idx"] for v in st.variants(confirm[0]["id"]) if v["config"] == result["recommended"])
        psnr, _ = psnr_ssim(st.load_images(confirm[0]["id"], at), st.load_images(confirm[0]["id"], 0))
    assert result["confirmation"]["quality"] == pytest.approx(min(psnr, 100.0))

    # the grid: every stack on the search's full rung (read back from the store where the search measured it)
    space, objective, plan, pool, baseline = prepare("tiny-arch", "hard", 0, SPACE, "psnr", _plan())
    tuner = Tuner(space, objective, plan, Evaluator(rundir, baseline, objective), pool)
    grid = tuner.ev.evaluate([(s, space.variant(s)) for s in space.enumerate()], tuner.promote)
    best = max((e for e in grid if objective.meets(e)), key=lambda e: e.speedup)
    _, promoted = Tuner(space, Objective("psnr", 0), plan, Evaluator(rundir, baseline, objective), pool).search()
    answer = max((e for e in promoted if objective.meets(e)), key=lambda e: e.speedup)
    assert answer.stack == best.stack == {"deepcache.interval": 2}  # the one stack without a sleep: the fastest
    assert len(promoted) < len(grid)  # the search measured fewer stacks at the full rung than the grid
    assert (rundir / "tune.json").is_file() and (rundir / "front.html").is_file()


@pytest.mark.parametrize("argv, match", [
    (["--tolerance", "-1"], "--tolerance -1.0 is out of range"),
    (["--tolerance", "2", "--metric", "accuracy"], "--metric accuracy: model 'tiny-arch' has random weights"),
    (["--tolerance", "2", "--space", '{"methods": [], "values": {"steps": [50]}}'], "empty"),
    (["--tolerance", "2", "--budget-minutes", "0.00001"], "too small for one evaluation"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, match):
    from backend.__main__ import main

    out = tmp_path / "never"
    code = main(["tune", "--model", "tiny-arch", "--out", str(out),
                 "--space", json.dumps({"methods": ["deepcache"], "fixed": {"steps": 1}}), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1
    assert not out.exists()


def _fake_tuner(tmp_path, tolerance=2.0, budget_s=None):
    """A Tuner on a 500-prompt pool whose predictor learnt, from 40 judged stacks, that images far from the
    baseline's (12 dB) flip two verdicts in three (as many gains as losses) and images close to it (50 dB) almost
    none."""
    from backend.tune.search import Eval, Evaluator, Objective, Plan, Tuner
    from backend.tune.space import build_space

    objective = Objective("accuracy", tolerance)
    space = build_space("tiny-arch", {"methods": ["deepcache"]})
    tuner = Tuner(space, objective, Plan(), Evaluator(tmp_path, {}, objective), [f"prompt {i}" for i in range(500)],
                  budget_s)
    for i in range(40):
        far = i % 2 == 0
        diffs = ([-1, 1, 0] * 6)[:16] if far else ([0] * 15 + [(-1) ** (i // 10) if i % 10 == 1 else 0])
        tuner.judged.append(Eval({}, {}, "promote", speedup=2.0, quality=100 * sum(diffs) / 16, quality_ci=[0, 0],
                                 n=16, diffs=diffs, psnr_db=[12.0 if far else 50.0] * 16))
    tuner._predict([])
    return tuner


def _stack(psnr: float, diffs: list[int], speedup: float = 2.0):
    from backend.tune.search import Eval

    return Eval({"deepcache.interval": len(diffs) + int(psnr)}, {}, "promote", speedup=speedup,
                quality=100 * sum(diffs) / len(diffs), quality_ci=[-10, 10], n=len(diffs), diffs=diffs,
                psnr_db=[psnr] * len(diffs))


def test_the_confirmation_n_grows_with_the_predicted_discordance(tmp_path):
    import math

    from backend.tune.search import MIN_CONFIRM_N

    tuner = _fake_tuner(tmp_path, tolerance=5.0)
    ns = []
    for pairs in (0, 1, 2):  # verdicts flipped on 16 prompts, as many losses as gains: the same mean, more spread
        e = _stack(50.0, [-1, 1] * pairs + [0] * (16 - 2 * pairs))
        picks, n = tuner._plan_confirmation([e], math.inf)
        assert picks == [e] and n <= tuner.cap
        assert tuner.predictor.low(e, n) >= -5  # the interval it is predicted to have at n clears the tolerance
        if n > MIN_CONFIRM_N:
            assert tuner.predictor.low(e, n - 1) < -5  # and n is the fewest that do
        ns.append(n)
    assert ns[0] < ns[1] < ns[2] and ns[2] > 100  # a fixed n = 100 would not do for the most discordant

    # with a budget, the confirmation takes the time left: more prompts than it needs when they fit, the need at most
    # the pool allows, and a pick whose need does not fit is dropped for the one that does
    tuner.ev.base_latency = [1.0]  # one baseline image per second, nothing else to pay
    calm, noisy = _stack(50.0, [0] * 16, speedup=2.0), _stack(50.0, [-1, 1, 1] + [0] * 13, speedup=3.0)
    picks, n = tuner._plan_confirmation([calm], 10_000)
    assert n == tuner.cap
    picks, n = tuner._plan_confirmation([calm, noisy], 150)
    assert picks == [calm] and MIN_CONFIRM_N <= n < tuner.cap


def test_screening_ranks_a_near_lossless_stack_before_a_faster_one_whose_images_drift(tmp_path):
    """Four prompts without a flip say nothing; the pixels do: a stack whose images stay at the baseline's is
    predicted to clear the tolerance and is promoted first, a faster one whose images drift is not."""
    tuner = _fake_tuner(tmp_path)
    lossless, drifting = _stack(50.0, [0] * 4, speedup=2.0), _stack(12.0, [0] * 4, speedup=20.0)
    tuner.judged += [lossless, drifting]
    tuner._predict([])
    assert tuner._likely(lossless) and not tuner._likely(drifting)
    assert tuner._ranked([drifting, lossless]) == [lossless, drifting]
    assert lossless.predicted["n_needed"] <= tuner.cap and drifting.predicted["n_needed"] is None


def test_time_is_planned_from_what_each_variant_took(tmp_path):
    tuner = _fake_tuner(tmp_path)
    # 2 s per baseline image, 0.5 s per prompt of any variant (judging, storing), 5 s per variant built, and the
    # baseline variant's own images 1 s slower each
    tuner.ev.costs = [(u, n, b, 2 * u + 0.5 * n + 5 + b * u) for u, n, b in
                      ((10, 4, False), (20, 4, False), (40, 16, False), (12, 16, False), (9, 4, True), (25, 16, True))]
    assert tuner._cost_model() == pytest.approx((2.0, 0.5, 5.0, 1.0))
    stack, base_units = _stack(50.0, [0] * 16, speedup=2.0), tuner.promote.units([])
    assert tuner._seconds(tuner.promote, [stack]) == pytest.approx(
        2 * tuner.promote.units([2.0]) + (8 + 5) * 2 + base_units)
