"""Bench pages are generated from the benches' own fragments, never edited by hand."""

import json

import pytest

from backend.bench import docs


@pytest.mark.parametrize("name", docs.benches_with_fragments())
def test_every_bench_page_is_what_its_fragments_build(name):
    page = docs.DOCS / f"bench-{name}.md"
    assert page.read_text() == docs.build_page(name), (
        f"docs/bench-{name}.md differs from its fragments: rebuild with `python -m backend bench docs`; put "
        f"readings in docs/readings/bench-{name}.md")
    assert (docs.READINGS / f"bench-{name}.md").exists()


def test_a_bench_run_writes_one_fragment_per_model_and_the_page_from_them(tmp_path, monkeypatch):
    monkeypatch.setattr(docs, "DOCS", tmp_path)
    monkeypatch.setattr(docs, "FRAGMENTS", tmp_path / "bench")
    rows = [{"model": "shapes", "config": "fp32", "speedup": 1.0, "speedup_ci": [0.9, 1.1]},
            {"model": "sd15-arch", "config": "fp32", "speedup": float("inf")}]
    paths = docs.write_fragments("toy", rows, "python -m backend bench toy --json")
    assert sorted(p.name.split("--")[0] for p in paths) == ["sd15-arch", "shapes"]
    fragment = json.loads(paths[0].read_text())
    assert fragment["command"] == "python -m backend bench toy --json" and fragment["environment"]["torch"]
    assert fragment["device"] == docs.device_label(fragment["environment"])
    page = docs.write_page("toy").read_text()
    assert page == docs.build_page("toy") and page.count("## ") == 2 and '"inf"' in page
    docs.write_fragments("toy", rows[:1], "python -m backend bench toy --n 2")  # a rerun replaces its fragment
    assert len(docs.fragments("toy")) == 2 and "--n 2" in docs.build_page("toy")
