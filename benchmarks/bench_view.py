"""Seconds for `gres view` to build the site of a `gres segment` run of 1,000 and of 10,000
records, side by side (thumbnails and large pictures included), then the same again with the
previous site's pictures reused. With /usr/bin/chromium and Playwright, also the seconds the
page takes to open in headless Chromium and to apply a filter, and the milliseconds a review
key press takes (j then f, the handler, the saving to localStorage and the layout of the
change), with no correction kept yet and with every record of the run corrected.

    python benchmarks/bench_view.py [--sizes 1000,10000] [--width 640 --height 480]

Photos are JPEGs of the given size (one in three with a mask PNG), each its own file, so every
record gets its own pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from grd_tools.imageio import write_mask
from gres_cli.view import build_site

GROUP_SIZE = 50
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_run(root: Path, records: int, width: int, height: int) -> Path:
    """A run folder of `records` records: photos copied from a few distinct JPEGs."""
    rng = np.random.default_rng(0)
    bases = []
    for k in range(4):
        ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0.3, 1, height)[:, None, None]
        pixels = (30 + ramp * rng.integers(80, 220, 3)).astype(np.uint8)
        path = root / f"base-{k}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        bases.append(path.read_bytes())
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = True
    run = root / "run"
    lines = []
    for i in range(records):
        group = f"group-{i // GROUP_SIZE:04d}"
        photo = root / "photos" / group / f"{i:06d}.jpg"
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(bases[i % len(bases)])
        present = i % 3 == 0
        mask_path = None
        if present:
            mask_path = run / group / f"{i:06d}.png"
            write_mask(mask_path, mask)
        score = float(rng.normal(0.2, 0.5))
        rec = {"image": str(photo), "group": group, "expression": "the red umbrella"}
        rec |= {"present": present, "d_pos": 1.0, "d_neg": 1.0 + score, "margin": 0.25}
        rec |= {"score": score, "mask": str(mask_path) if mask_path else None, "area": 0}
        rec |= {"bbox": None, "width": width, "height": height, "error": None}
        lines.append(json.dumps(rec))
    run.mkdir(parents=True, exist_ok=True)
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    settings = {"model": "bench", "margin": 0.25}  # names the run: the page's review needs it
    (run / "settings.json").write_text(json.dumps(settings) + "\n")
    return run


#: in the page: milliseconds per review key press, over 100 (j, f) pairs, layout included
KEYS_MS = """() => {
  const press = (key) => document.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true}));
  const started = performance.now();
  for (let k = 0; k < 100; k++) {
    for (const key of ["j", "f"]) { press(key); void document.body.offsetHeight; }
  }
  return (performance.now() - started) / 200;
}"""
#: in the page: a correction kept for every record (what the page holds at the end of a review)
CORRECT_ALL = """() => {
  const d = window.GRES_VIEW_DATA, run = "gres-view-review:" + d.review.run;
  for (const i of d.items) {
    const expression = d.expressions[i.expression];
    const c = {image: i.image, expression, group: d.groups[i.group],
      was: i.present ? "present" : "absent", answer: "rejected"};
    localStorage.setItem(run + ":" + JSON.stringify([i.image, expression]), JSON.stringify(c));
  }
  localStorage.setItem(run, JSON.stringify({edits: d.items.length, downloaded: null}));
}"""


def page_seconds(index: Path, n: int) -> tuple[float, float, float, float] | None:
    """(seconds to open the page until rendered, seconds to apply the 'present' filter,
    ms per review key press with no correction kept, the same with every record corrected)."""
    if not Path("/usr/bin/chromium").exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        started = time.perf_counter()
        page.goto(index.as_uri())
        page.wait_for_selector("body[data-ready=true]")
        opened = time.perf_counter() - started
        started = time.perf_counter()
        page.select_option("#filter", "present")
        page.wait_for_function("document.querySelector('.page-info').textContent !== ''")
        filtered = time.perf_counter() - started
        page.select_option("#filter", "all")
        assert page.locator("#review").count() == 1, "no review on the page"
        fresh_ms = page.evaluate(KEYS_MS)
        page.evaluate(CORRECT_ALL)
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.inner_text("#review-count").startswith(f"{n} changed")
        full_ms = page.evaluate(KEYS_MS)
        browser.close()
    return opened, filtered, fresh_ms, full_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"gres view of a segment run: {args.width}x{args.height} JPEGs, {os.cpu_count()} cores")
    header = ("records", "build s", "ms/rec", "rebuild s", "open s", "filter s", "key ms")
    header += ("key ms*",)
    print(" ".join(f"{h:>9}" for h in header))
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-view-") as tmp:
            run = make_run(Path(tmp), n, args.width, args.height)
            first = build_site(run)
            again = build_site(run)
            assert first.drawn == n and again.reused == n, (first, again)
            browser = page_seconds(first.out / "index.html", n)
        opened, filtered, key_ms, key_full_ms = browser or (float("nan"),) * 4
        rows.append((n, first.seconds, key_ms, key_full_ms))
        cells = (n, first.seconds, 1000 * first.seconds / n, again.seconds, opened, filtered)
        cells += (key_ms, key_full_ms)
        print(" ".join(f"{c:>9}" if isinstance(c, int) else f"{c:>9.2f}" for c in cells))
    print("key ms*: a key press with every record of the run corrected (kept in localStorage)")
    if len(rows) == 2:
        (n0, s0, k0, f0), (n1, s1, k1, f1) = rows
        print(f"{n1 / n0:.0f}x the records took {s1 / s0:.1f}x the time to build")
        print(f"a review key press: {k1 / k0:.1f}x the time at {n1 / n0:.0f}x the records")
        print(f"  with every record corrected: {f0 / k0:.1f}x and {f1 / k1:.1f}x the time")


if __name__ == "__main__":
    main()
