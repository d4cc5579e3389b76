"""The workbench launched in-process (prevent_thread_lock) and driven through gradio_client."""

import json
import time

import pytest

PROMPT = "a small red circle in the center"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.__main__ import create, launch

    demo, cb = create("tiny-arch", str(tmp_path_factory.mktemp("store")))
    _, url, _ = launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    yield url, cb
    demo.close()


@pytest.fixture
def client(server):
    from gradio_client import Client

    # a generous timeout: a saturated CI CPU answers slowly
    return Client(server[0], verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 120})


def test_generate_baseline_and_deepcache(client):
    # one entry per column, null for a column that is off: results land in the column that asked
    variants = [{"steps": 6}, None, {"name": "dc", "steps": 6, "deepcache": {"interval": 3}}]
    job = client.submit(PROMPT, 1, "tiny-arch", json.dumps(variants), api_name="/generate")
    out = job.result()
    steps = job.outputs()  # each column as soon as it is made: the baseline's image comes first, alone
    assert len(steps) == 2 and steps[0][0]["value"].endswith(".png") and "value" not in steps[0][2]
    assert steps[0][11] == "1 of 2 images…"
    images = [next((s[k]["value"] for s in reversed(steps) if "value" in s[k]), None) for k in range(5)]
    results, status = out[10], out[11]
    assert images[0].endswith(".png") and images[2].endswith(".png") and images[1] is None and images[3:] == [None] * 2
    assert out[0]["label"] == "baseline · 6 steps" and out[2]["label"] == "dc: DeepCache N=3 · 6 steps"
    assert [r["name"] for r in results] == ["baseline · 6 steps", "dc: DeepCache N=3 · 6 steps"]
    assert all(r["latency_s"] > 0 for r in results) and results[1]["psnr_vs_baseline"] is not None
    assert out[5].startswith("**baseline · 6 steps**") and out[6] == "" and out[7].startswith("**dc: DeepCache")
    assert status.startswith("Done: 2 images")


def test_limits_refuse_a_huge_request(client):
    out = client.predict(PROMPT, 0, "tiny-arch", json.dumps([{"steps": 2}, {"steps": 500}]), api_name="/generate")
    assert "--max-steps" in out[6] and out[5].startswith("**baseline")


def test_bad_input_is_said_in_the_status_line(client):
    for prompt, model, variants, needle in (("   ", "tiny-arch", [{"steps": 2}], "prompt"),
                                            (PROMPT, "nonsense", [{"steps": 2}], "unknown model"),
                                            (PROMPT, "tiny-arch", "[{", "malformed JSON")):
        out = client.predict(prompt, 0, model, variants if isinstance(variants, str) else json.dumps(variants),
                             api_name="/generate")
        assert out[11].startswith("**Error:**") and needle in out[11]
    # and the app keeps working
    out = client.predict(PROMPT, 0, "tiny-arch", json.dumps([{"steps": 2}]), api_name="/generate")
    assert out[11].startswith("Done")


def test_cancel_a_generation(client):
    job = client.submit(PROMPT, 0, "tiny-arch", json.dumps([{"steps": 200}] * 5), api_name="/generate")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until it runs (its cancel flag exists)
        msg = client.predict(api_name="/cancel")
        if msg.startswith("**Cancelling"):
            break
        time.sleep(0.2)
    assert msg.startswith("**Cancelling")
    out = job.result(timeout=30)
    assert out[11].startswith("**Cancelled**")


def test_start_and_cancel_a_finetune(client, server):
    with pytest.raises(Exception, match="preset"):
        client.predict("efficientdm", "nope", "tiny-arch", "{}", api_name="/finetune_preset")
    job_id = client.predict("efficientdm", "1-minute demo", "tiny-arch", "{}", api_name="/finetune_preset")
    state = client.predict(job_id, api_name="/job")
    assert state["status"] in ("queued", "running") and state["kind"] == "efficientdm" and state["error"] is None
    msg = client.predict(job_id, api_name="/cancel_finetune")
    assert job_id in msg
    state = server[1].jobs.wait(job_id, 40)
    assert state["status"] == "cancelled" and state["error"] is None
    with pytest.raises(Exception, match="outside the folders"):
        client.predict("lcd", "1-minute demo", "tiny-arch", json.dumps({"data": "/etc"}), api_name="/finetune_preset")
    with pytest.raises(Exception, match="minutes"):
        client.predict("efficientdm", "quality", "tiny-arch", json.dumps({"minutes": 100000}),
                       api_name="/finetune_preset")
