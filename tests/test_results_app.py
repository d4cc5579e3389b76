"""The Streamlit results explorer, driven headless with streamlit.testing.v1.AppTest."""

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app" / "results.py")


def _make_run(rundir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_fixtures", Path(__file__).with_name("test_reports.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_run(rundir, failed_last=True)


def test_browse_filter_and_download(tmp_path, monkeypatch):
    _make_run(tmp_path / "runs" / "first")
    monkeypatch.setenv("SPEEDLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="rundir").value.endswith("first")
    assert "8/8" not in at.selectbox(key="run").format_func(at.selectbox(key="run").value)  # one failed
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 7
    assert any("Not finished: lcm2" in w.value for w in at.warning)
    charts = at.get("plotly_chart")
    assert len(charts) >= 3
    assert len(at.get("image")) >= 7  # one per finished variant

    at.multiselect(key="variants").set_value(["baseline", "dc2", "dc4"]).run()
    assert not at.exception
    assert list(at.dataframe[0].value["variant"]) == ["baseline", "dc2", "dc4"]
    at.multiselect(key="families").set_value(["quant"]).run()
    assert any("No variant matches" in i.value for i in at.info)

    at.multiselect(key="families").set_value(["base", "DeepCache", "quant", "LCM"]).run()
    at.button(key="build").click().run()
    assert not at.exception, at.exception
    assert Path(at.session_state["report"]).is_file()
    assert len(at.get("download_button")) == 2


def test_no_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDLAB_RUNS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert "No run found" in at.info[0].value
