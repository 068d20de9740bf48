"""Pictures (contact sheet tiles, HTML thumbnails) and the index/search/dedup command lines."""

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_hvit.search.cli import dedup_main, index_main, search_main
from modeling_hvit.search.report import CAPTION, PAD, Row, contact_sheet, html_page
from test_modeling import tiny_model

COLORS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (10, 250, 250), (250, 10, 250)]


def solid_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(COLORS):
        p = folder / f"c{i}.png"
        Image.new("RGB", (50, 40), c).save(p)
        paths.append(p)
    return paths


class Figures(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.captions, self._cap = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.sections.append([])
        if tag == "img":
            self.sections[-1].append(dict(attrs)["src"])
        self._cap = tag == "figcaption"

    def handle_data(self, data):
        if self._cap:
            self.captions.append(data)
            self._cap = False


def test_contact_sheet_tiles_are_the_images(tmp_path):
    paths = solid_images(tmp_path / "imgs")
    rows = [Row(paths[0], "query", [(p, f"d={i}") for i, p in enumerate(paths[1:4])]),
            Row(paths[4], "query", [(paths[5], "d=9"), (tmp_path / "missing.png", "d=10")])]
    thumb = 64
    sheet = contact_sheet(rows, tmp_path / "s.png", thumb=thumb)
    im = Image.open(tmp_path / "s.png").convert("RGB")
    assert im.size == sheet.size == (PAD + 4 * (thumb + PAD), PAD + 2 * (thumb + CAPTION + PAD))
    expected = {(0, 0): COLORS[0], (0, 1): COLORS[1], (0, 2): COLORS[2], (0, 3): COLORS[3],
                (1, 0): COLORS[4], (1, 1): COLORS[5], (1, 2): (200, 200, 200), (1, 3): (255, 255, 255)}
    for (r, t), color in expected.items():
        centre = (PAD + t * (thumb + PAD) + thumb // 2, PAD + r * (thumb + CAPTION + PAD) + thumb // 2)
        assert im.getpixel(centre) == color, (r, t)


@pytest.mark.parametrize("embed", [True, False])
def test_html_page_has_one_thumbnail_per_tile(tmp_path, embed):
    paths = solid_images(tmp_path / "imgs")
    rows = [Row(paths[0], "query", [(p, f"d={i}") for i, p in enumerate(paths[1:])])]
    out = html_page(rows, tmp_path / "page.html", embed=embed)
    parser = Figures()
    parser.feed(out.read_text())
    assert [len(s) for s in parser.sections] == [6]
    assert parser.captions[1:] == [f"d={i}" for i in range(5)]
    srcs = parser.sections[0]
    if embed:
        assert all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    else:
        assert srcs == [f"imgs/c{i}.png" for i in range(6)] and all((tmp_path / s).exists() for s in srcs)


def test_cli_build_add_search_dedup(tmp_path, capsys):
    paths = solid_images(tmp_path / "imgs")
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    (tmp_path / "more").mkdir()
    Image.open(paths[0]).save(tmp_path / "more" / "copy_of_c0.png")
    ix = str(tmp_path / "ix")
    assert index_main(["build", str(tmp_path / "imgs"), ix, "--model", str(model_dir), "--no-progress"]) == 0
    assert index_main(["add", ix, str(tmp_path / "more"), "--no-progress"]) == 0  # model from the manifest
    assert "7 images" in capsys.readouterr().out
    assert search_main([ix, str(paths[2]), "-k", "3", "--format", "json", "--sheet", str(tmp_path / "s.png"),
                        "--html", str(tmp_path / "s.html")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["hits"][0]["path"] == str(paths[2].resolve()) and len(res[0]["hits"]) == 3
    assert Image.open(tmp_path / "s.png").size[0] > 0 and (tmp_path / "s.html").exists()
    assert search_main([ix, str(tmp_path / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert dedup_main([ix, "--threshold", "1e-4", "--csv", str(tmp_path / "g.csv")]) == 0
    with open(tmp_path / "g.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == ["c0.png", "copy_of_c0.png"]
    assert dedup_main([ix]) == 0 and "choose a threshold" in capsys.readouterr().out
    assert dedup_main([str(tmp_path / "imgs")]) == 2
