"""The app in a real headless browser: the Space's ``app.py`` serves an index in its own process
(as on a Space, the pictures in ``HVIT_IMAGES``, not at their recorded paths), Chromium from the system package manager (``.ci/run`` installs it) opens
``/?query=ID&k=K``; the rendered DOM must hold the result gallery (K thumbnails captioned with the
Python API's distances) and the table of exact distances, and the screenshot must show the thumbnails."""

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

from test_search_app import build_app_index  # noqa: E402  (skips/fails as that module does without gradio)

from modeling_hvit.search import Embedder, HViTIndex  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
K = 4
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium not found under CI (.ci/run installs it: apt-get install chromium)")
    pytest.skip("Chromium not installed (apt-get install chromium)")


class Page(HTMLParser):
    """From a dumped DOM: the <img> alts inside #hvit-results, the cell texts inside #hvit-hits."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []  # (tag, what it opens: "results" / "hits" / "cell")
        self.alts: list[str] = []
        self.cells: dict[tuple[int, int], str] = {}
        self._cell = None

    def _inside(self, what: str) -> bool:
        return any(w == what for _, w in self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and self._inside("results"):
            self.alts.append(a.get("alt") or "")
        if tag in VOID:
            return
        what = {"hvit-results": "results", "hvit-hits": "hits"}.get(a.get("id"))
        if a.get("role") == "gridcell" and self._inside("hits"):
            what, self._cell = "cell", (int(a["data-row"]), int(a["data-col"]))
            self.cells[self._cell] = ""
        self.stack.append((tag, what))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self.stack:
            t, what = self.stack.pop()
            if what == "cell":
                self._cell = None
            if t == tag:
                break

    def handle_data(self, data):
        if self._cell is not None:
            self.cells[self._cell] += data.strip()


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


def browse(chrome: str, url: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={out.parent / 'chrome-profile'}", "--window-size=1280,1400",
           "--virtual-time-budget=30000", *flags, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=out.parent)


def colourful(png: Path) -> float:
    """Fraction of saturated pixels (thumbnails; the UI itself is white/grey with one orange button)."""
    hsv = np.asarray(Image.open(png).convert("HSV"), dtype=np.float64) / 255
    return float(((hsv[..., 1] > 0.35) & (hsv[..., 2] > 0.2)).mean())


def test_browser_shows_the_result_gallery(tmp_path):
    chrome = chromium()
    index_dir, model_dir, paths = build_app_index(tmp_path)
    index = HViTIndex.load(index_dir, embedder=Embedder.from_model(str(model_dir)))
    row = 2
    expected = index.search(index.embeddings[row], K)[0]  # the page searches with the stored embedding
    images = tmp_path / "space" / "images"  # as on a Space: the pictures moved away from the recorded paths
    images.parent.mkdir()
    (tmp_path / "imgs").rename(images)

    port, log = free_port(), tmp_path / "app.log"
    env = dict(os.environ, HVIT_INDEX=str(index_dir), HVIT_IMAGES=str(images),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("HVIT_MODEL", None)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until_serving(base, proc, log)
        url = f"{base}?{urllib.parse.urlencode({'query': index.ids[row], 'k': K})}"
        dom = browse(chrome, url, tmp_path / "page.html", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        (tmp_path / "page.html").write_text(dom.stdout)
        shot, empty = tmp_path / "app.png", tmp_path / "app-no-query.png"
        for png, address in ((shot, url), (empty, base)):
            r = browse(chrome, address, png, f"--screenshot={png}")
            assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    keep = Path(tempfile.gettempdir()) / "hvit-test-app-browser.png"
    shutil.copyfile(shot, keep)
    print(f"browser screenshot: {keep}  (DOM: {tmp_path / 'page.html'})")

    page = Page()
    page.feed(dom.stdout)
    # the gallery: K thumbnails captioned with the API's distances, in its order
    assert [alt for alt in page.alts if alt.startswith("d = ")] == [f"d = {h['distance']:.4f}" for h in expected]
    # the table: rank, the exact distance (JavaScript prints the shortest round-trip form), id
    rows = sorted({r for r, _ in page.cells})
    assert len(rows) == K, page.cells
    assert [int(page.cells[r, 0]) for r in rows] == list(range(1, K + 1))
    assert [float(page.cells[r, 1]) for r in rows] == [h["distance"] for h in expected]
    assert [page.cells[r, 2] for r in rows] == [h["id"] for h in expected]

    with Image.open(shot) as im:
        assert im.size == (1280, 1400)
        assert np.asarray(im.convert("L"), dtype=np.float64).std() > 20  # not a blank page
    # the K result thumbnails add colour the page without a query does not have (K tiles ≈ 15% of it)
    assert colourful(shot) - colourful(empty) > 0.05, (colourful(shot), colourful(empty))
