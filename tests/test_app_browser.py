"""The workbench end to end in headless Chromium (Debian's chromium package, driven by Playwright with
executable_path; browser downloads are impossible here, so `playwright install` is never used), on the embedded
model with the checkpoints shipped in assets/: the default page's four methods, columns that stay true, labels
that follow the settings, bad input said in one line, the aligned before/after comparison, the grid PNG, Cancel,
the Curves tab's quantization maps, the Fine-tune tab (start, progress, cancel, a finished checkpoint offered in the
Playground) and the Report tab (export, open the HTML)."""

import re
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
    for col, needle in enumerate(("baseline", "DeepCache N=3", "EfficientDM W4A4", "LCM rg-lcm-lora")):
        expect(page.locator(f"#image-{col} img")).to_be_visible()
        expect(page.locator(f"#caption-{col}")).to_contain_text(needle)
        expect(page.locator(f"#image-{col}")).to_contain_text(needle)  # the image's label is the column's
    expect(page.locator("#image-4 img")).to_have_count(0)  # the fifth column is off
    expect(page.locator("#caption-3")).to_contain_text("2 U-Net evals")  # 2 recommended steps, its guidance: no CFG
    expect(page.locator("#caption-3")).to_contain_text("judge ✓")  # the default prompt drawn right
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
    expect(page.locator("#status")).to_contain_text("denoising", timeout=60_000)
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


def _only_columns(page, keep: tuple[int, ...]) -> None:
    for col in range(1, 5):
        box = page.locator(f"#use-{col} input[type=checkbox]")
        box.check() if col in keep else box.uncheck()


def test_first_load_hints_and_bad_input_is_one_line(browser, page_url):
    """No empty image boxes without a hint; a negative seed and 0 steps are refused by name (no Error badges)."""
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    expect(page.locator("#status")).to_contain_text("Press Generate")
    _only_columns(page, ())
    _set(page, "#seed", "-1")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("seed -1 is out of range; allowed: 0 to 9007199254740991",
                                                    timeout=30_000)
    _set(page, "#seed", "9007199254740993")  # 2^53 + 1: refused, not run as 2^53
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("seed 9007199254740992 is out of range", timeout=30_000)
    _set(page, "#seed", "0")
    _set(page, "#steps-0", "0")
    page.locator("#generate").click()
    expect(page.locator("#caption-0")).to_contain_text("steps: 0 is not allowed; allowed: a whole number from 1",
                                                       timeout=30_000)
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)  # no error badge over the images
    page.screenshot(path=str(SHOTS / "bad-input.png"), full_page=False)
    page.close()


SHOTS = Path(__file__).resolve().parents[1] / "runs" / "screenshots"
SHOTS.mkdir(parents=True, exist_ok=True)


def test_label_follows_the_settings_and_the_report_has_every_column(browser, page_url, tmp_path):
    """A column named "DeepCache N=3" moved to interval 5 says N=5 in its image, the comparison picker and the
    exported report; the report's HTML opens with every column's image and numbers."""
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    _only_columns(page, (1,))
    _set(page, "#rounds", "0")
    _set(page, "#steps-0", "6")
    page.locator("#sampling-1").get_by_text("sampling").click()
    expect(page.locator("#steps-1")).to_be_visible()  # the accordion open before its box is filled (under load)
    _set(page, "#steps-1", "6")
    expect(page.locator("#steps-1 input").first).to_have_value("6")
    _set(page, "#name-1", "DeepCache N=3")
    _set(page, "#deepcache-interval-1", "5")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Done: 2 images", timeout=120_000)
    label = "DeepCache N=3: DeepCache N=5 · 6 steps"
    expect(page.locator("#image-1")).to_contain_text(label)
    expect(page.locator("#caption-1")).to_contain_text(label)
    page.screenshot(path=str(SHOTS / "label-follows-settings.png"))

    page.get_by_role("tab", name="Report").click()
    expect(page.locator("#report-status")).to_contain_text("Export report")  # the hint before any export
    page.locator("#export").click()
    expect(page.locator("#report-status")).to_contain_text("Exported", timeout=60_000)
    with page.expect_download(timeout=30_000) as info:
        page.locator("#report-html").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    text = path.read_text()
    assert "baseline · 6 steps" in text and label in text and "N=3 ·" not in text
    report = browser.new_page(viewport={"width": 1400, "height": 1000})
    report.goto(path.as_uri())
    images = report.locator("img")
    assert images.count() >= 2
    for k in range(images.count()):  # every image decodes (a data URI or a file beside the page)
        assert images.nth(k).evaluate("e => e.complete && e.naturalWidth > 0")
    body = report.locator("body")
    expect(body).to_contain_text(label)
    expect(body).to_contain_text(re.compile(r"latency"))
    report.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    report.close()
    page.close()


def test_finetune_start_progress_cancel_and_a_finished_checkpoint(browser, page_url):
    """Start the 1-minute demo on shapes, see it reach training steps, cancel it (said at once, done within
    seconds); then a short tiny-arch fine-tune finishes and its checkpoint is offered in the Playground."""
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#start-finetune").click()
    status = page.locator("#job-status")
    expect(status).to_contain_text("efficientdm on shapes", timeout=30_000)
    expect(status).to_contain_text(re.compile(r"step \d+"), timeout=120_000)  # progress: training steps counted
    page.screenshot(path=str(SHOTS / "finetune-progress.png"))
    page.locator("#cancel-finetune").click()
    start = time.perf_counter()
    expect(status).to_contain_text(re.compile("cancel requested|cancelled"), timeout=10_000)  # said at once
    expect(status).to_contain_text("cancelled", timeout=30_000)
    print(f"cancel took {time.perf_counter() - start:.1f} s after the request was shown")

    _set(page, "#ft-model", "tiny-arch")
    page.get_by_text("advanced settings").click()
    for name, value in (("minutes", "0.05"), ("max_iters", "1"), ("train_steps", "2"), ("batch_size", "1"),
                        ("lora_rank", "2")):
        _set(page, f"#ft-efficientdm-{name}", value)
    page.locator("#start-finetune").click()
    expect(status).to_contain_text("efficientdm on tiny-arch", timeout=30_000)
    expect(status).to_contain_text("selectable in the Playground", timeout=120_000)
    job_id = re.search(r"\d{8}-\d{6}-[0-9a-f]{6}", status.inner_text()).group(0)
    page.screenshot(path=str(SHOTS / "finetune-done.png"))

    page.get_by_role("tab", name="Playground").click()
    model = page.locator("#model input").first  # a dropdown that takes a typed value
    model.fill("tiny-arch")
    model.press("Enter")
    expect(page.locator("#status")).to_contain_text("Model tiny-arch ready", timeout=60_000)
    page.locator("#quant-checkpoint-2 input").click()
    expect(page.get_by_role("option", name=f"efficientdm {job_id} (tiny-arch)")).to_be_visible(timeout=10_000)
    page.screenshot(path=str(SHOTS / "finetune-checkpoint-offered.png"))
    page.close()


def test_a_transformer_model_locks_the_methods_its_family_refuses(browser, page_url):
    """Switching to tiny-sd3: ToMe's on box locked with the reason, DeepCache's U-Net branch replaced by the DiT block
    knobs, FirstBlockCache absent from the cache kinds and MagCache offered, shapes' checkpoints cleared; back
    to shapes restores the forms."""
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    model = page.locator("#model input").first
    model.fill("tiny-sd3")
    model.press("Enter")
    expect(page.locator("#status")).to_contain_text("Model tiny-sd3 ready", timeout=60_000)
    expect(page.locator("#status")).to_contain_text("Not for its family (sd3): tome, schedule")
    page.get_by_role("button", name="ToMe").first.click()
    tome = page.locator("#tome-on-1 input")
    expect(tome).to_be_disabled()
    expect(page.locator("#tome-on-1")).to_contain_text("does not apply to a model of family 'sd3'")
    expect(page.locator("#deepcache-branch-1")).to_be_hidden()
    expect(page.locator("#deepcache-first_blocks-1")).to_be_visible()
    page.get_by_role("button", name="diffusers cache").first.click()
    expect(page.locator("#diffusers_cache-kind-1")).to_contain_text("not fbc on sd3")
    page.locator("#diffusers_cache-kind-1 input").click()
    expect(page.get_by_role("option", name="faster")).to_be_visible(timeout=10_000)
    expect(page.get_by_role("option", name="fbc")).to_have_count(0)
    expect(page.get_by_role("option", name="magcache")).to_be_visible()
    expect(page.locator("#quant-checkpoint-2 input")).to_have_value("(none)")  # shapes' checkpoint: cleared
    expect(page.locator("#quant-weight_bits-2 input").first).to_be_enabled()  # and what it had locked, unlocked
    page.screenshot(path=str(SHOTS / "dit-family-locks.png"), full_page=True)
    page.keyboard.press("Escape")
    model.fill("shapes")
    model.press("Enter")
    expect(page.locator("#status")).to_contain_text("Model shapes ready", timeout=60_000)
    expect(tome).to_be_enabled()
    expect(page.locator("#deepcache-branch-1")).to_be_visible()
    page.close()


def test_shapes_dit_generates_its_columns_with_the_judge(browser, page_url):
    """The embedded DiT in the Playground: the baseline, block caching, EfficientDM and RG-LCM drawn and judged (the
    Shapes judge's mark in every caption), the EfficientDM and RG-LCM columns moved to shapes-dit's own shipped
    checkpoints."""
    from playwright.sync_api import expect

    from backend.runs.knobs import asset_checkpoints

    dit_quant = [c["label"] for c in asset_checkpoints("shapes-dit", "quant")]
    dit_students = [c["label"] for c in asset_checkpoints("shapes-dit", "consistency")]
    page = _open(browser, page_url)
    model = page.locator("#model input").first
    model.fill("shapes-dit")
    model.press("Enter")
    expect(page.locator("#status")).to_contain_text("Model shapes-dit ready", timeout=60_000)
    _set(page, "#steps-0", "10")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Timed in", timeout=240_000)
    expect(page.locator("#caption-1")).to_contain_text("DeepCache N=3")
    for column in range(4):  # shapes-dit speaks the Shapes world: each column carries the judge's verdict
        expect(page.locator(f"#caption-{column}")).to_contain_text(re.compile(r"judge [✓✗]"))
    if dit_quant:
        expect(page.locator("#quant-checkpoint-2 input")).to_have_value(dit_quant[0])
        expect(page.locator("#caption-2")).to_contain_text("EfficientDM W4A4")
        expect(page.locator("#image-2 img")).to_be_visible()
    if dit_students:
        expect(page.locator("#consistency-checkpoint-3 input")).to_have_value(dit_students[0])
        expect(page.locator("#caption-3")).to_contain_text("LCM rg-lcm-lora-dit")
        expect(page.locator("#image-3 img")).to_be_visible()
    page.screenshot(path=str(SHOTS / "shapes-dit-playground.png"), full_page=True)
    page.close()
