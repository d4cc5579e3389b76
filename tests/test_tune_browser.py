"""The Find my stack tab in headless Chromium (as tests/test_app_browser.py): a one-stack search on tiny-arch fills
the front and the recommended Variant, and "Open in Playground" puts it in the Playground's column 1."""

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
SPACE = {"methods": ["deepcache"], "values": {"deepcache.interval": [2]}, "fixed": {"steps": 1}}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is absent: install Debian's package (apt-get install -y chromium) to run this test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from app.__main__ import create, launch

    demo, _ = create("tiny-arch", str(tmp_path_factory.mktemp("store")))
    _, url, _ = launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        p = browser.new_page(viewport={"width": 1400, "height": 1100})
        p.goto(url, wait_until="domcontentloaded")
        sync_api.expect(p.locator("#generate")).to_be_visible(timeout=90_000)
        yield p
        browser.close()
    demo.close()


def test_find_my_stack_fills_the_front_and_opens_the_winner_in_the_playground(page, tmp_path):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Find my stack").click()
    for elem, value in (("#tune-tolerance", "0"), ("#tune-budget", "0")):
        page.locator(f"{elem} input").fill(value)
    page.locator("#tune-space textarea").fill(json.dumps(SPACE))
    page.locator("#tune-start").click()
    expect(page.locator("#tune-status")).to_contain_text("recommended: deepcache.interval=2", timeout=600_000)
    expect(page.locator("#tune-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#tune-variant")).to_contain_text('"interval": 2')
    page.screenshot(path=str(Path(os.environ.get("TUNE_SCREENSHOT", tmp_path / "tune.png"))), full_page=True)

    page.locator("#tune-open").click()
    page.get_by_role("tab", name="Playground").click()
    expect(page.locator("#name-1 input, #name-1 textarea").first).to_have_value("deepcache.interval=2")
    expect(page.locator("#use-1 input")).to_be_checked()
