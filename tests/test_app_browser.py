"""The workbench end to end in headless Chromium (Debian's chromium package, driven by Playwright with
executable_path; browser downloads are impossible here, so `playwright install` is never used), on the embedded
model with the checkpoints shipped in assets/: the default page's four methods, columns that stay true, the
aligned before/after comparison, the grid PNG, Cancel, and the Curves tab's quantization maps."""

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    from backend.models import SHAPES_DIR

    if not (SHAPES_DIR / "model_index.json").exists():
        pytest.skip("the embedded shapes-sd model is not in assets/")
    if CHROMIUM is None:
        pytest.skip("Chromium is absent: install Debian's package (apt-get install -y chromium) to run this test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements.txt)")
    from app.__main__ import create, launch

    demo, _ = create("shapes", str(tmp_path_factory.mktemp("store")))
    _, url, _ = launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _open(browser, url):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    page.goto(url, wait_until="domcontentloaded")
    expect(page.locator("#generate")).to_be_visible(timeout=90_000)
    return page


def _set(page, selector: str, value: str) -> None:
    box = page.locator(f"{selector} input[type=number], {selector} input[type=text], {selector} textarea").first
    box.fill(value)
    box.press("Enter")


@pytest.fixture(scope="module")
def generated(browser, page_url):
    """The default page after one Generate and its timing rounds (the baseline at 10 steps to keep it short)."""
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    _set(page, "#steps-0", "10")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Timed in 3 interleaved rounds", timeout=240_000)
    yield page
    page.close()


def test_default_page_shows_four_methods(generated):
    from playwright.sync_api import expect

    page = generated
    for col, needle in enumerate(("baseline", "DeepCache", "EfficientDM W4A4", "RG-LCM 4-step")):
        expect(page.locator(f"#image-{col} img")).to_be_visible()
        expect(page.locator(f"#caption-{col}")).to_contain_text(needle)
        expect(page.locator(f"#image-{col}")).to_contain_text(needle)  # the image's label is the column's name
    expect(page.locator("#image-4 img")).to_have_count(0)  # the fifth column is off
    expect(page.locator("#caption-3")).to_contain_text("8 U-Net evals")  # 4 lcm steps × CFG
    expect(page.locator("#caption-1")).to_contain_text("× [")  # the speed-up with its interval
    expect(page.locator("#status")).to_contain_text("Done: 4 images")
    box = page.locator("#image-0 img").bounding_box()
    assert box["width"] >= 150  # drawn large (the 64 px image is upscaled, pixel for pixel)


def test_before_after_layers_are_aligned(generated):
    page = generated
    top = page.locator("#before-after .ba-top")
    bottom = page.locator("#before-after .ba-bottom")
    a, b = top.bounding_box(), bottom.bounding_box()
    assert a is not None and a == b and a["width"] >= 256
    page.locator("#before-after .ba-range").fill("80")
    assert "20%" in top.evaluate("e => e.style.clipPath")


def test_grid_png_downloads(generated, tmp_path):
    from PIL import Image

    page = generated
    with page.expect_download(timeout=30_000) as info:
        page.locator("#grid-download").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.suffix == ".png" and path.name.startswith("speedlab-grid-")
    width, height = Image.open(path).size
    assert width >= 4 * 256 and height >= 256


def test_an_off_middle_column_keeps_every_image_in_its_own_column(browser, page_url):
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    _set(page, "#steps-0", "6")
    page.locator("#use-2 input[type=checkbox]").uncheck()
    _set(page, "#name-3", "my student")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Done: 3 images", timeout=180_000)
    expect(page.locator("#status")).to_contain_text("Timed in", timeout=180_000)
    expect(page.locator("#image-2 img")).to_have_count(0)
    expect(page.locator("#caption-2")).to_have_text("")
    expect(page.locator("#image-3 img")).to_be_visible()
    expect(page.locator("#image-3")).to_contain_text("my student")
    expect(page.locator("#caption-3")).to_contain_text("my student")
    expect(page.locator("#caption-1")).to_contain_text("DeepCache")
    page.close()


def test_cancel_stops_a_long_generation(browser, page_url):
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    for col in (0, 1, 2):  # three columns of 200 steps: a minute or more of work
        if col:
            page.locator(f"#sampling-{col}").get_by_text("sampling").click()  # open the accordion
        _set(page, f"#steps-{col}", "200")
    page.locator("#generate").click()
    expect(page.locator("#image-0")).to_contain_text("denoising", timeout=60_000)
    start = time.perf_counter()
    page.locator("#cancel").click()
    expect(page.locator("#status")).to_contain_text("Cancelled", timeout=30_000)
    took = time.perf_counter() - start
    print(f"cancel took {took:.2f} s")
    assert took < 15  # the three columns would need far longer
    expect(page.locator("#cancel-note")).to_contain_text("Cancelling")
    page.close()


def test_curves_tab_shows_the_ptq_heat_map(browser, page_url):
    """The quantization maps come from the newest `bench quant` fragments of the model in docs/bench/quant/."""
    from playwright.sync_api import expect

    from backend.bench.docs import latest_fragment

    fragment = latest_fragment("quant", "shapes", "grid")
    if fragment is None:
        pytest.skip("no `bench quant --grid` fragment of shapes in docs/bench/quant/")
    page = _open(browser, page_url)
    page.get_by_role("tab", name="Curves").click()
    expect(page.locator("#quant-grid g.hm image").first).to_be_visible(timeout=60_000)  # a drawn heat-map
    expect(page.locator("#quant-grid")).to_contain_text("PTQ accuracy drop vs FP")
    expect(page.locator("#quant-grid-caption")).to_contain_text(fragment["command"])
    expect(page.locator("#quant-grid-caption")).to_contain_text(f"commit {fragment['environment']['git_commit']}")
    page.close()
