"""Screenshots of TensorBoard for a reviewer: two runs of different model families (the default
hybrid and model=ease) in one log dir, opened in headless Chromium; Time Series, HParams,
Projector and the summary table saved as small PNGs under docs/.

    python benchmarks/tensorboard_screens.py                    # trains both runs (a few minutes)
    python benchmarks/tensorboard_screens.py --logdir outputs   # or screenshots the runs already there

Needs Chromium (Debian: apt-get install chromium) and Playwright (pip install playwright; its
own browser download is not needed: --chromium points at the system one). Not part of the test
suite. Writes docs/tensorboard_{timeseries,hparams,projector,summary}.png.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = ("timeseries", "hparams", "projector", "summary")


def train(logdir: str, epochs: int) -> None:
    """The README's two runs into logdir, run folders named as train.py names them."""
    for model in ("hybrid", "ease"):
        cmd = [sys.executable, "train.py", f"model={model}", f"trainer.max_epochs={epochs}",
               "hydra.run.dir=" + os.path.join(logdir, "${now:%Y-%m-%d}/${now:%H-%M-%S}_${hydra:runtime.choices.model}")]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        time.sleep(1.1)                     # distinct HH-MM-SS folder names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(logdir: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                             "--port", str(port), "--reload_interval", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/data/runs", timeout=2)
            time.sleep(3)                   # the first full load of the event files
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("tensorboard did not start")


def shoot(url: str, out: str, chromium: str | None, width: int, height: int) -> list[str]:
    from playwright.sync_api import sync_playwright
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                                          "--ignore-gpu-blocklist", "--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})

        def save(name: str) -> None:
            path = os.path.join(out, f"tensorboard_{name}.png")
            page.screenshot(path=path)
            _shrink(path)
            saved.append(path)
            print("saved", path, os.path.getsize(path), "bytes", flush=True)

        page.goto(url + "/#timeseries")
        page.wait_for_selector("text=test/ndcg@10", timeout=90_000)
        settings = page.locator("button:has-text('Settings')")
        if settings.count() and page.locator("text=Horizontal Axis").count():
            settings.first.click()          # the settings pane opens on a first visit: close it
        page.wait_for_timeout(1000 * 4)                       # the charts draw after the cards
        save("timeseries")

        page.set_viewport_size({"width": max(width, 1800), "height": height})   # room for the metric columns
        page.goto(url + "/#hparams")
        page.wait_for_selector("text=model.lam", timeout=90_000)
        page.wait_for_timeout(1000 * 3)
        save("hparams")
        page.set_viewport_size({"width": width, "height": height})

        page.goto(url + "/#text")
        page.wait_for_selector("text=Beyond accuracy", timeout=90_000)
        page.wait_for_timeout(1000 * 2)
        save("summary")

        page.goto(url + "/#projector")
        frame = _projector_frame(page)      # the projector runs in nested iframes
        frame.wait_for_selector("text=/Points: \\d+/", timeout=180_000)
        page.wait_for_timeout(1000 * 10)                      # tensors.tsv parsed, PCA computed, points drawn
        for column in ("genre", "popularity"):   # colour the points (best effort: the UI may change)
            try:
                frame.locator("paper-dropdown-menu:has-text('Color by')").first.click(timeout=5_000)
                frame.locator("paper-item").filter(has_text="colors") \
                    .filter(has_text=re.compile(rf"(^|\W){column}(?![a-z])")).filter(visible=True).first.click(timeout=5_000)
                page.wait_for_timeout(1000 * 3)
                break
            except Exception as e:          # noqa: BLE001 (a screenshot without colours is still one)
                print(f"projector: could not colour by {column}:", type(e).__name__, flush=True)
                page.keyboard.press("Escape")
        save("projector")
        browser.close()
    return saved


def _projector_frame(page):
    for _ in range(120):
        frame = next((f for f in page.frames if "projector_binary" in f.url), None)
        if frame is not None:
            return frame
        page.wait_for_timeout(500)          # (not time.sleep: Playwright handles events meanwhile)
    raise RuntimeError("no projector frame: does a run hold tensorboard/projector_config.pbtxt?")


def _shrink(path: str) -> None:
    """A palette PNG (256 colours): TensorBoard's flat UI loses nothing, the file a few times smaller."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logdir", help="screenshot the runs in this folder; trains the two runs into it when it is empty "
                                     "or missing (default: a temp folder)")
    ap.add_argument("--epochs", type=int, default=30, help="trainer.max_epochs of the hybrid run (default 30)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                    help="the Chromium binary (default: the system one; none: Playwright's own)")
    ap.add_argument("--size", default="1400x900", help="viewport WIDTHxHEIGHT")
    args = ap.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="tb_screens_")
    if not os.path.isdir(logdir) or not os.listdir(logdir):      # nothing there yet: train the two runs
        train(logdir, args.epochs)
    proc, url = serve(logdir)
    try:
        w, h = (int(v) for v in args.size.split("x"))
        shoot(url, args.out, args.chromium, w, h)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
