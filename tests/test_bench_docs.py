"""Bench pages are generated from the benches' own fragments, never edited by hand; a fragment without the
measurement protocol's fields is refused; page numbers are rounded to what their intervals support."""

import json
import re

import pytest

from backend.bench import docs
from backend.bench.summary import MAX_DIGITS, fmt, short_rows

NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def significant_digits(number: str) -> int:
    mantissa = number.lstrip("+-").split("e")[0]
    digits = mantissa.replace(".", "").lstrip("0")
    if "." not in mantissa:
        digits = digits.rstrip("0")
    return len(digits)


def _normalised_svg(text: str) -> str:
    """SVG text with coordinates rounded to a tenth of a point: ISA-dependent float noise does not count."""
    return re.sub(r"-?\d+\.\d+", lambda m: f"{float(m.group()):.1f}", text)


@pytest.mark.parametrize("name", docs.bench_pages())
def test_every_bench_page_is_what_its_fragments_build(name):
    page = docs.DOCS / f"bench-{name}.md"
    assert page.read_text() == docs.build_page(name), (
        f"docs/bench-{name}.md differs from its fragments: rebuild with `python -m backend bench docs`; put "
        f"readings in docs/readings/bench-{name}.md")
    assert (docs.READINGS / f"bench-{name}.md").exists()
    svg, plot = docs.DOCS / f"bench-{name}.svg", docs.build_plot(name)
    assert svg.exists() == (plot is not None)
    if plot is not None:
        assert _normalised_svg(svg.read_text()) == _normalised_svg(plot)
        assert f"](bench-{name}.svg)" in page.read_text()


@pytest.mark.parametrize("name", docs.bench_pages())
def test_no_page_prints_a_number_with_more_than_four_significant_digits(name):
    text = (docs.DOCS / f"bench-{name}.md").read_text()
    long = [n for n in NUMBER.findall(text) if significant_digits(n) > MAX_DIGITS]
    assert not long, f"docs/bench-{name}.md prints {long[:5]}"


def test_every_fragment_has_the_protocols_fields():
    for path in sorted(docs.FRAGMENTS.glob("*/*.json")):
        docs.read_fragment(path)  # raises naming the file and the field


def test_numbers_are_rounded_to_what_their_interval_supports():
    assert fmt(2.2740570138, [2.1831051456235318, 2.407457013827955], "×") == "2.27× [2.18, 2.41]"
    assert fmt(1.0164824240000598, [0.9806840615253118, 1.053769766870183]) == "1.016 [0.981, 1.054]"
    assert fmt(-80.0, [-88.0, -72.0]) == "-80 [-88, -72]"
    assert fmt(48.03, [43.2, 55.1]) == "48 [43, 55]" and fmt(48.03, [43.2, 53.1]) == "48.0 [43.2, 53.1]"
    assert fmt(13218.5) == "13200" and fmt(0.065536) == "0.0655" and fmt(0.0) == "0"
    assert fmt(123456.7, [123400.1, 123500.2]) == "123500 [123400, 123500]"  # never more than 4 digits
    row = {"config": "n3", "speedup": 2.27, "speedup_ci": [2.18, 2.41], "accuracy_delta_points": -1.0,
           "accuracy_delta_ci": [-3.0, 0.0], "peak_mem_mb": 5.512, "noise": 1.23456789}
    assert short_rows([row]) == [{"what": "n3", "speed-up": "2.27× [2.18, 2.41]", "accuracy Δ (points)":
                                  "-1.0 [-3.0, 0.0]", "verdict": "no measurable difference", "memory (MB)": "5.51"}]


def _toy_docs(tmp_path, monkeypatch):
    monkeypatch.setattr(docs, "DOCS", tmp_path)
    monkeypatch.setattr(docs, "FRAGMENTS", tmp_path / "bench")


def test_a_bench_run_writes_one_fragment_per_model_and_the_page_from_them(tmp_path, monkeypatch):
    _toy_docs(tmp_path, monkeypatch)
    rows = [{"model": "shapes", "config": "fp32", "latency_s": 1.0, "latency_ci": [0.9, 1.1],
             "psnr_vs_baseline": 30.0, "psnr_vs_baseline_ci": [29.0, 31.0]},
            {"model": "sd15-arch", "config": "fp32", "speedup": float("inf"), "speedup_ci": [1.0, 1.2]}]
    paths = docs.write_fragments("toy", rows, "python -m backend bench toy --json")
    assert sorted(p.name.split("--")[0] for p in paths) == ["sd15-arch", "shapes"]
    fragment = json.loads(paths[0].read_text())
    assert fragment["command"] == "python -m backend bench toy --json" and fragment["environment"]["torch"]
    assert fragment["device"] == docs.device_label(fragment["environment"])
    page = docs.write_page("toy").read_text()
    assert page == docs.build_page("toy") and page.count("## ") == 2 and "∞" in page
    assert (tmp_path / "bench-toy.svg").read_text().startswith("<?xml")
    assert docs.build_plot("toy") == docs.build_plot("toy")  # deterministic: no date, fixed hash salt
    docs.write_fragments("toy", rows[:1], "python -m backend bench toy --n 2")  # a rerun replaces its fragment
    assert len(docs.fragments("toy")) == 2 and "--n 2" in docs.build_page("toy")


@pytest.mark.parametrize("broken, field", [
    (lambda f: f["rows"][0].pop("speedup_ci"), "KEY_ci"),
    (lambda f: f["environment"].pop("cpu_isa"), "environment.cpu_isa"),
    (lambda f: f.pop("command"), "command"),
])
def test_bench_docs_refuses_a_fragment_without_the_protocols_fields(tmp_path, monkeypatch, capsys, broken, field):
    from backend.__main__ import main

    _toy_docs(tmp_path, monkeypatch)
    (tmp_path / "readings").mkdir()
    good = {"bench": "toy", "model": "shapes", "device": "cpu-avx2", "command": "python -m backend bench toy",
            "date": "2026-12-04", "environment": {"cpu_isa": "avx2"},
            "rows": [{"config": "n3", "speedup": 2.0, "speedup_ci": [1.9, 2.1]}]}
    (tmp_path / "bench" / "toy").mkdir(parents=True)
    (tmp_path / "bench" / "toy" / "a.json").write_text(json.dumps(good))
    assert main(["bench", "docs"]) == 0
    before = {p.name: p.read_text() for p in tmp_path.glob("bench-*")}
    bad = json.loads(json.dumps(good))
    broken(bad)
    (tmp_path / "bench" / "toy" / "b.json").write_text(json.dumps(bad))
    capsys.readouterr()
    assert main(["bench", "docs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "toy/b.json" in err and field in err
    assert {p.name: p.read_text() for p in tmp_path.glob("bench-*")} == before  # no page half-written


def test_statement_rows_are_lines_and_the_verdict_follows_the_accuracy_delta():
    """A bench's claim rows (a verdict in words, nothing measured) are listed one line each under the table, not cut
    by MAX_ROWS; with several deltas the single verdict column is the accuracy delta's; steps label the rows only
    where they differ."""
    from backend.bench.summary import short_rows, short_table

    rows = [{"variant": "student", "steps": s, "hf_delta": 0.5, "hf_delta_ci": [0.1, 0.9],
             "acc_delta": -0.02, "acc_delta_ci": [-0.07, 0.03]} for s in (1, 2)]
    rows.append({"variant": "claim: it works", "steps": 2, "verdict": "yes: student at 2"})
    short = short_rows(rows[:2])
    assert [r["what"] for r in short] == ["student · 1 step", "student · 2 steps"]
    assert short[0]["verdict"] == "no measurable difference" and short[0]["accuracy Δ (points)"] == "-2 [-7, 3]"
    table = short_table(rows)
    assert table.endswith("- **claim: it works · 2 steps** — yes: student at 2") and table.count("| student") == 2


def test_rows_sharing_a_label_are_told_apart_by_method_and_a_row_with_nothing_to_show_is_left_to_the_json():
    """A quant grid's PTQ and EfficientDM rows of one setting read "W3A8 paper · ptq" / "· efficientdm"; its
    summary row (a list of settings, no column of the table) is not an empty table line."""
    from backend.bench.summary import short_table

    delta = {"delta": -0.1, "ci": [-0.2, -0.05], "n": 100}
    rows = [{"method": "fp", "setting": "FP", "model_size_mb": 8.0},
            {"method": "ptq", "setting": "W3A8 paper", "prompt_accuracy_delta": delta, "model_size_mb": 1.3},
            {"method": "efficientdm", "setting": "W3A8 paper", "prompt_accuracy_delta": delta, "model_size_mb": 1.3},
            {"method": "summary", "ptq_breaks_at": ["W3A8 paper"], "break_rule": "drop ≥ 10 points"}]
    lines = short_table(rows).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| FP", "| W3A8 paper · ptq", "| W3A8 paper · efficientdm"]
