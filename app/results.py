"""Speedlab results explorer (streamlit run app/results.py): browse runs in the results store, filter variants,
plots, the same-seed image grid, and download the report. Read-only: every action is one call into backend/.

The folder it looks in is $SPEEDLAB_RUNS, else the first argument after ``--`` (``streamlit run app/results.py
-- RUNDIR``), else ./runs: a run directory, or a folder holding run directories; it can be changed in the sidebar.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.reports import plots  # noqa: E402
from backend.reports.export import export_report, metrics_table  # noqa: E402
from backend.runs.store import DB_NAME, Store, StoreError  # noqa: E402


def default_folder() -> str:
    if os.environ.get("SPEEDLAB_RUNS"):
        return os.environ["SPEEDLAB_RUNS"]
    args = [a for a in sys.argv[1:] if not a.startswith("-") and Path(a).is_dir()]
    return args[0] if args else "runs"


def find_run_dirs(folder: str) -> list[Path]:
    """Run directories (holding results.db) at folder, or up to two levels below it."""
    root = Path(folder).expanduser()
    if (root / DB_NAME).is_file():
        return [root]
    if not root.is_dir():
        return []
    found = sorted({p.parent for pattern in (f"*/{DB_NAME}", f"*/*/{DB_NAME}") for p in root.glob(pattern)})
    return found


@st.cache_data(ttl=5, show_spinner=False)
def load(rundir: str, run_id: str) -> tuple[dict, list[dict]]:
    with Store(rundir, create=False) as store:
        return store.run(run_id), store.variants(run_id)


@st.cache_data(ttl=5, show_spinner=False)
def list_runs(rundir: str) -> list[dict]:
    with Store(rundir, create=False) as store:
        return store.runs()


def main() -> None:
    st.set_page_config(page_title="Speedlab results", layout="wide")
    st.title("Speedlab results")
    folder = st.sidebar.text_input("Run directory (or a folder of runs)", value=default_folder(), key="folder")
    dirs = find_run_dirs(folder)
    if not dirs:
        st.info(f"No run found in {folder!r}. Make one with: python -m backend sweep SPEC.yaml --out RUNDIR")
        return
    rundir = st.sidebar.selectbox("Run directory", [str(d) for d in dirs], key="rundir")
    try:
        runs = list_runs(rundir)
    except StoreError as exc:
        st.error(str(exc))
        return
    if not runs:
        st.info("This store holds no run yet.")
        return
    labels = {r["id"]: f"{r.get('name') or r['id']} · {r['id']} · {r['n_done']}/{r['n_variants']} done · {r['status']}"
              for r in runs}
    run_id = st.sidebar.selectbox("Run", list(labels), format_func=labels.get, key="run")
    run, variants = load(rundir, run_id)
    df = plots.results_frame(variants)
    if df.empty:
        st.warning("No variant of this run has finished yet.")
        return

    names = list(df["variant"])
    families = sorted(set(df["family"]))
    chosen_families = st.sidebar.multiselect("Method family", families, default=families, key="families")
    chosen = st.sidebar.multiselect("Variants", names, default=names, key="variants")
    shown = df[df["variant"].isin(chosen) & df["family"].isin(chosen_families)]
    st.caption(f"{len(run['prompts'])} prompts, the same seeds for every variant · {len(shown)} of {len(df)} "
               f"finished variants shown · executor {run['settings'].get('executor', 'local')}")
    unfinished = [v for v in variants if v["status"] != "done"]
    if unfinished:
        st.warning("Not finished: " + ", ".join(f"{v['name']} ({v['status']})" for v in unfinished))
    if shown.empty:
        st.info("No variant matches the filters.")
        return

    tab_table, tab_plots, tab_images, tab_report = st.tabs(["Metrics", "Plots", "Images", "Report"])
    with tab_table:
        st.dataframe(metrics_table(shown), hide_index=True, width="stretch")
    with tab_plots:
        for title, fig in plots.figures(shown.reset_index(drop=True)):
            st.plotly_chart(fig, key=f"fig-{title}", width="stretch")
    with tab_images:
        n = len(run["prompts"])
        idx = st.slider("Prompt", 0, n - 1, 0, key="prompt") if n > 1 else 0
        st.write(f"**{run['prompts'][idx]}** · seed {run['seeds'][idx]}")
        by_name = {v["name"]: v for v in variants}
        cols = st.columns(min(6, len(shown)))
        for k, name in enumerate(shown["variant"]):
            image = next((im for im in by_name[name]["images"] if im["prompt_idx"] == idx), None)
            with cols[k % len(cols)]:
                if image is not None:
                    st.image(str(Path(rundir) / image["path"]), caption=name, width=128)
    with tab_report:
        st.write("One self-contained HTML file (opens offline): metrics, plots, image grid, configs, environment.")
        if st.button("Build report", key="build"):
            out = Path(tempfile.mkdtemp(prefix="speedlab-report-")) / "report.html"
            paths = export_report(rundir, out, run_id=run_id)
            st.session_state["report"] = str(paths.html)
            st.session_state["bundle"] = str(paths.zip)
        if st.session_state.get("report") and Path(st.session_state["report"]).is_file():
            st.download_button("Download report.html", Path(st.session_state["report"]).read_bytes(),
                               file_name="report.html", mime="text/html", key="download")
            st.download_button("Download bundle (.zip)", Path(st.session_state["bundle"]).read_bytes(),
                               file_name="report.zip", mime="application/zip", key="download-zip")


main()
