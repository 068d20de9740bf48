"""The app in a real headless browser: the Space's ``app.py`` serves an index in its own process (as
on a Space, the pictures in ``HVIT_IMAGES``, not at their recorded paths); Chromium and its driver
from the system package manager (``.ci/run`` installs them), driven by Selenium, open
``/?query=ID&k=K``. The rendered page must show the result gallery (K thumbnails captioned with the
Python API's distances, each showing that neighbour's picture in the screenshot) and the table of
exact distances."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_search_app import build_app_index, small  # noqa: E402  (skips/fails as that module does without gradio)

from modeling_hvit.search import Embedder, HViTIndex  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
K = 4
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
# true once the K result thumbnails are loaded and fully shown (Gradio fades outputs in after a run)
RESULTS_SHOWN = """
const imgs = [...document.querySelectorAll('#hvit-results img')].filter(i => (i.alt || '').startsWith('d = '));
if (imgs.length !== arguments[0] || !imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
for (let e = imgs[0]; e; e = e.parentElement) if (getComputedStyle(e).opacity !== '1') return false;
return true;
"""


def need(what: str, hint: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} missing under CI ({hint})")
    pytest.skip(f"{what} not installed ({hint})")


def browser(profile: Path):
    """Headless Chromium through the system chromedriver (no driver or browser download)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need("selenium", "pip install -e '.[dev]'")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chrome and driver):
        need("Chromium / chromedriver", ".ci/run installs them: apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look anything up
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--hide-scrollbars", "--window-size=1280,1400", "--force-device-scale-factor=1",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


class Page(HTMLParser):
    """From the rendered DOM: the <img> alts inside #hvit-results, the text pieces inside #hvit-hits."""

    def __init__(self, html: str):
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []  # (tag, the element it opens: "results" / "hits")
        self.alts: list[str] = []
        self.texts: list[str] = []
        self.feed(html)

    def _inside(self, what: str) -> bool:
        return any(w == what for _, w in self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and self._inside("results"):
            self.alts.append(a.get("alt") or "")
        if tag not in VOID:
            self.stack.append((tag, {"hvit-results": "results", "hvit-hits": "hits"}.get(a.get("id"))))

    def handle_endtag(self, tag):
        while tag not in VOID and self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if data.strip() and self._inside("hits"):
            self.texts.append(data.strip())


def js_number(x: float) -> str:
    """How JavaScript prints a float (the shortest round-trip digits, like Python's repr, but
    positional from 1e-6 up and no trailing ``.0``)."""
    if x != 0 and abs(x) < 1e-6:
        return repr(x).replace("e-0", "e-")
    return np.format_float_positional(x, trim="-")


def contains_run(seq: list[str], run: list[str]) -> bool:
    return any(seq[i:i + len(run)] == run for i in range(len(seq) - len(run) + 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_browser_shows_the_result_gallery(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser(tmp_path / "chrome-profile")
    try:
        index_dir, model_dir, paths = build_app_index(tmp_path)
        index = HViTIndex.load(index_dir, embedder=Embedder.from_model(str(model_dir)))
        row = 2
        expected = index.search(index.embeddings[row], K)[0]  # the page searches with the stored embedding
        table = []  # the table, row after row: rank, the exact distance, id, (label), path
        for rank, h in enumerate(expected, 1):
            table += [str(rank), js_number(h["distance"]), h["id"], *([h["label"]] if h["label"] else []), h["path"]]
        images = tmp_path / "space" / "images"  # as on a Space: the pictures moved away from the recorded paths
        images.parent.mkdir()
        (tmp_path / "imgs").rename(images)

        port, log = free_port(), tmp_path / "app.log"
        env = dict(os.environ, HVIT_INDEX=str(index_dir), HVIT_IMAGES=str(images), GRADIO_SERVER_NAME="127.0.0.1",
                   GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        env.pop("HVIT_MODEL", None)
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            base = f"http://127.0.0.1:{port}/"
            wait_until_serving(base, proc, log)
            driver.get(f"{base}?{urllib.parse.urlencode({'query': index.ids[row], 'k': K})}")
            wait = WebDriverWait(driver, 180, poll_frequency=0.5)
            wait.until(lambda d: d.execute_script(RESULTS_SHOWN, K), "the result gallery never showed")
            wait.until(lambda d: contains_run(Page(d.page_source).texts, table), "the table never showed the hits")
            html = driver.page_source
            shot = tmp_path / "app.png"
            assert driver.save_screenshot(str(shot))
            tiles = [e.rect for e in driver.find_elements(By.CSS_SELECTOR, "#hvit-results img")
                     if (e.get_attribute("alt") or "").startswith("d = ")]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        driver.quit()
    (tmp_path / "page.html").write_text(html)
    keep = Path(tempfile.gettempdir()) / "hvit-test-app-browser.png"
    shutil.copyfile(shot, keep)
    print(f"browser screenshot: {keep}  (DOM: {tmp_path / 'page.html'})")

    # the gallery: K thumbnails captioned with the API's distances, in its order
    page = Page(html)
    assert [alt for alt in page.alts if alt.startswith("d = ")] == [f"d = {h['distance']:.4f}" for h in expected]
    # the screenshot: not blank, and each tile shows its neighbour's picture (from HVIT_IMAGES)
    with Image.open(shot) as im:
        screen = im.convert("RGB")
    assert np.asarray(screen.convert("L"), dtype=np.float64).std() > 20
    assert len(tiles) == K
    for rect, h in zip(tiles, expected):
        box = (rect["x"], rect["y"], rect["x"] + rect["width"], rect["y"] + rect["height"])
        assert rect["width"] > 50 and 0 <= box[1] and box[3] <= screen.size[1], rect  # visible, not a sliver
        tile = tmp_path / "tile.png"
        screen.crop(tuple(round(v) for v in box)).save(tile)
        assert np.abs(small(tile) - small(images / Path(h["path"]).name)).mean() < 12, (h["id"], rect)
