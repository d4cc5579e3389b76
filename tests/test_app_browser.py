"""End to end in headless Chromium (Debian's chromium package, driven by Playwright with executable_path;
browser downloads are impossible here, so `playwright install` is never used): load the page, click
Generate, see the baseline and the DeepCache image."""

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is absent: install Debian's package (apt-get install -y chromium) to run this test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements.txt)")
    from app.__main__ import create, launch

    demo, _ = create("tiny-arch", str(tmp_path_factory.mktemp("store")))
    _, url, _ = launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def test_generate_in_the_browser(page_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(page_url, wait_until="domcontentloaded")
            generate = page.locator("#generate")
            expect(generate).to_be_visible(timeout=90_000)
            load_s = time.perf_counter() - start
            # fewer steps keep the test short: the baseline column's steps slider
            steps = page.get_by_label("steps").first
            steps.fill("4")
            steps.press("Enter")
            generate.click()
            expect(page.locator("#image-0 img")).to_be_visible(timeout=90_000)
            expect(page.locator("#image-1 img")).to_be_visible(timeout=90_000)
            expect(page.locator("#caption-0")).to_contain_text("baseline", timeout=10_000)
            expect(page.locator("#caption-1")).to_contain_text("DeepCache", timeout=10_000)
            expect(page.locator("#caption-1")).to_contain_text("cached steps")
            expect(page.locator("#status")).to_contain_text("Done: 2 images")
            print(f"page load {load_s:.2f} s")
        finally:
            browser.close()
