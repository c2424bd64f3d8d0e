"""Look at the built book as a reader does: every chapter in headless Chromium, light and dark.

For each page of the built HTML (``make book`` first) this writes, under ``_build/screenshots/``,

- ``<page>-<mode>.png``: the page rendered at 1280 px wide and as tall as ``--height``, and
  ``<page>-<mode>-<k>.png`` tiles of it, one screen (1280 × 1400) each, to look at;
- ``report.json``: per page and mode, what the rendered DOM holds: typeset equations
  (MathJax's ``mjx-container`` elements), raw TeX left in the text (``\\(``, ``\\[``, ``$$``),
  images and widgets' static panels, and the notebook download link,

and prints that report as a table. Dark mode is the theme's own, chosen through the
``prefers-color-scheme`` Chromium reports with ``--force-dark-mode``.

    python book/screenshots.py                    # every chapter
    python book/screenshots.py --only 07 --only 10
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "book-src" / "_build" / "html"
OUT = ROOT / "_build" / "screenshots"
WIDTH, TILE = 1280, 1400


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "headless_shell"):
        if path := shutil.which(name):
            return path
    raise SystemExit("no Chromium found (chromium, chromium-browser or google-chrome on PATH)")


def render(browser: str, page: Path, dark: bool, height: int, png: Path | None) -> str:
    """The DOM of ``page`` after its scripts ran (MathJax included); a screenshot into ``png``."""
    with tempfile.TemporaryDirectory() as profile:
        args = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                f"--window-size={WIDTH},{height}"] + (["--force-dark-mode"] if dark else [])
        if png is not None:
            subprocess.run(args + [f"--screenshot={png}", page.as_uri()], check=True, capture_output=True,
                           timeout=180)
        return subprocess.run(args + ["--dump-dom", page.as_uri()], check=True, capture_output=True,
                              text=True, timeout=180).stdout


def inspect(dom: str) -> dict:
    """What a reader would see of the page's math, figures and widgets."""
    main = dom.split('<main', 1)[-1]
    text = html.unescape(re.sub(r"<(script|style|mjx-assistive-mml)\b.*?</\1>", "", main, flags=re.S))
    text = re.sub(r"<[^>]+>", " ", text)
    return {
        "equations": dom.count("<mjx-container"),
        "raw_tex": len(re.findall(r"\\\(|\\\[|\$\$", text)),
        "images": len(re.findall(r"<img\b", main)),
        "widget_panels": main.count("jupyter-widgets") + main.count("widget-"),
        "download_ipynb": ".ipynb" in dom,
        "theme": (m.group(1) if (m := re.search(r'data-theme="(\w+)"', dom)) else "?"),
    }


def tiles(png: Path) -> list[Path]:
    """The screenshot cut into screens, blank space at the bottom left out."""
    image = Image.open(png).convert("RGB")
    background = image.getpixel((WIDTH - 5, image.height - 5))
    rows = [y for y in range(0, image.height, 20)
            if any(image.getpixel((x, y)) != background for x in range(0, WIDTH, 16))]
    bottom = min(image.height, (rows[-1] + 40) if rows else image.height)
    out = []
    for k, top in enumerate(range(0, bottom, TILE)):
        path = png.with_name(f"{png.stem}-{k + 1}.png")
        image.crop((0, top, WIDTH, min(top + TILE, bottom))).save(path)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="pages whose name starts with this")
    parser.add_argument("--height", type=int, default=24000, help="page height to render in px")
    parser.add_argument("--no-images", action="store_true", help="only the DOM report")
    args = parser.parse_args(argv)
    if not HTML.is_dir():
        raise SystemExit(f"{HTML}: no built book; run `make book` first")
    browser = chromium()
    pages = sorted(HTML.glob("book/*.html"))  # html/index.html only redirects to book/index.html
    pages = [p for p in pages if not args.only or any(p.stem.startswith(o) for o in args.only)]
    OUT.mkdir(parents=True, exist_ok=True)
    report = {}
    for page in pages:
        for mode in ("light", "dark"):
            png = None if args.no_images else OUT / f"{page.stem}-{mode}.png"
            dom = render(browser, page, mode == "dark", args.height, png)
            found = inspect(dom)
            if png is not None:
                found["tiles"] = [str(t.relative_to(ROOT)) for t in tiles(png)]
            report[f"{page.stem} ({mode})"] = found
            print(f"{page.stem:<28} {mode:<5} equations {found['equations']:>4}  raw TeX {found['raw_tex']:>3}  "
                  f"images {found['images']:>3}  widget panels {found['widget_panels']:>3}  "
                  f".ipynb {'yes' if found['download_ipynb'] else 'no':<3}  theme {found['theme']}"
                  + (f"  tiles {len(found['tiles'])}" if png is not None else ""), flush=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=1))
    bad = [name for name, r in report.items() if r["raw_tex"]]
    if bad:
        print(f"raw TeX left on: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
