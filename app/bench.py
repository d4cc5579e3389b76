"""How fast the workbench shows images: ``python -m app.bench [--repeats 5] [--out FILE]``.

Launches the workbench on the embedded model, opens the default page in headless Chromium (Debian's package,
driven by Playwright) and clicks Generate ``repeats`` times (timing rounds off), measuring in the browser, from
the click, when the first column's image appears and when every column that is on has its image. The first click
builds the columns' pipelines (cold); the others reuse them (warm). Prints one JSON object (medians with the
range of the warm clicks, the cold click, the machine and its load: a busy machine is slower) and writes it to
``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
# in the page: milliseconds from the click until the first / every column's image is shown
WATCH_JS = """([n]) => new Promise((done) => {
  const t0 = performance.now(); let first = null;
  const tick = () => {
    const shown = [...Array(5).keys()].filter(k => document.querySelector(`#image-${k} img`)).length;
    if (shown >= 1 && first === null) first = performance.now() - t0;
    if (shown >= n) return done([first, performance.now() - t0]);
    requestAnimationFrame(tick);
  };
  document.querySelector('#generate').click(); tick();
})"""


def measure(repeats: int, model: str = "shapes") -> dict:
    from playwright.sync_api import expect, sync_playwright

    from app.__main__ import create, launch

    demo, _ = create(model, tempfile.mkdtemp(prefix="speedlab-bench-app-"))
    _, url, _ = launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    clicks = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(url)
            expect(page.locator("#generate")).to_be_visible(timeout=120_000)
            box = page.locator("#rounds input[type=number]")
            box.fill("0")
            box.press("Enter")
            n_on = 1 + sum(page.locator(f"#use-{k} input[type=checkbox]").is_checked() for k in range(1, 5))
            for _ in range(repeats):
                page.locator("#image-0 img").count()  # settle
                first_ms, all_ms = page.evaluate(WATCH_JS, [n_on])
                expect(page.locator("#status")).to_contain_text("Done:", timeout=300_000)
                clicks.append({"first_image_s": round(first_ms / 1000, 2), "all_images_s": round(all_ms / 1000, 2)})
                page.reload()
                expect(page.locator("#generate")).to_be_visible(timeout=120_000)
                page.locator("#rounds input[type=number]").fill("0")
                page.locator("#rounds input[type=number]").press("Enter")
            browser.close()
    finally:
        demo.close()
    warm = clicks[1:] or clicks

    def summary(key: str) -> dict:
        values = [c[key] for c in warm]
        return {"median": round(statistics.median(values), 2), "range": [min(values), max(values)]}

    return {"bench": "app-first-image", "model": model, "columns_on": n_on, "repeats": repeats,
            "command": "python -m app.bench " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
            "cold_click": clicks[0], "warm_first_image_s": summary("first_image_s"),
            "warm_all_images_s": summary("all_images_s"), "clicks": clicks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Generate clicks (the first is cold; default 5)")
    parser.add_argument("--model", default="shapes", help="the workbench's model (default shapes)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} is out of range; allowed: 1 or more")
    if not Path(CHROMIUM).exists():
        parser.error(f"Chromium is absent ({CHROMIUM}): apt-get install -y chromium")
    result = measure(args.repeats, args.model)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
