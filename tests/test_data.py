# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Builders on synthetic fixtures in each official layout (folder and archive), malformed variants,
and the real Omniglot / Caltech-101 data when present (required under CI=true)."""

import io
import os
import tarfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_hvit.data import DataError, build_dataset, dataset_labels
from modeling_hvit.data.transforms import TrainTransform, with_image_transform
from conftest import real_data


# -- fixture helpers ---------------------------------------------------------------------------------
def image_bytes(seed: int, fmt: str = "JPEG", mode: str = "RGB", size=(12, 9)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB").convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_files(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def write_archive(path: Path, files: dict[str, bytes | str]) -> Path:
    items = sorted((k, v.encode() if isinstance(v, str) else v) for k, v in files.items())
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for rel, data in items:
                zf.writestr(rel, data)
    else:
        mode = "w:gz" if path.name.endswith((".tgz", ".tar.gz")) else "w"
        with tarfile.open(path, mode) as tf:
            for rel, data in items:
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def build(*args, tmp_path, **kw):
    return build_dataset(*args, cache_dir=str(tmp_path / "cache"), **kw)


def decoded(ds):
    return [np.asarray(r["image"]) for r in ds]


# -- CUB -----------------------------------------------------------------------------------------------
def cub_files(n_classes=4, per_class=3, **overrides):
    classes = {c: f"{c:03d}.Bird_{c}" for c in range(1, n_classes + 1)}
    images, labels, files = [], [], {}
    k = 0
    for c in classes:
        for j in range(per_class):
            k += 1
            rel = f"{classes[c]}/img_{j}.jpg"
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
            files[f"CUB_200_2011/images/{rel}"] = image_bytes(k)
    order = [k - 1 for k in (np.random.default_rng(0).permutation(len(images)) + 1)]
    files["CUB_200_2011/classes.txt"] = "\n".join(f"{c} {n}" for c, n in classes.items()) + "\n"
    files["CUB_200_2011/images.txt"] = "\n".join(images[i] for i in order) + "\n"
    files["CUB_200_2011/image_class_labels.txt"] = "\n".join(labels[i] for i in order) + "\n"
    files.update(overrides)
    return files, [labels[i] for i in order]


def test_cub_split_by_class_id_folder_and_archives(tmp_path):
    files, label_lines = cub_files()
    folder = write_files(tmp_path / "cub", files)
    ds = build("cub", str(folder), tmp_path=tmp_path)
    assert set(ds) == {"train", "test"} and (len(ds["train"]), len(ds["test"])) == (6, 6)
    names = ds["train"].features["label"].names
    assert names == [f"{c:03d}.Bird_{c}" for c in range(1, 5)]
    # order and labels follow image_class_labels.txt; classes 1-2 train, 3-4 test
    want = [int(line.split()[1]) - 1 for line in label_lines]
    assert dataset_labels(ds["train"]) == [y for y in want if y < 2]
    assert dataset_labels(ds["test"]) == [y for y in want if y >= 2]
    for archive in ("CUB_200_2011.tgz", "CUB_200_2011.tar", "CUB_200_2011.zip"):
        path = write_archive(tmp_path / archive, files)
        for data_dir in (path, path.parent):  # the archive itself, or a folder holding it
            if data_dir == path.parent:
                for other in tmp_path.glob("CUB_200_2011.*"):
                    if other != path:
                        other.unlink()
            got = build("cub", str(data_dir), tmp_path=tmp_path)
            for split in ("train", "test"):
                assert dataset_labels(got[split]) == dataset_labels(ds[split])
                raw = got[split].cast_column("image", datasets.Image(decode=False))
                assert all(r["image"]["bytes"] for r in raw)  # bytes read straight from the archive
                for a, b in zip(decoded(got[split]), decoded(ds[split])):
                    np.testing.assert_array_equal(a, b)


def test_cub_wrong_field_count_names_file_and_line(tmp_path):
    files, _ = cub_files()
    lines = files["CUB_200_2011/image_class_labels.txt"].splitlines()
    lines[1] = lines[1] + " extra"
    files["CUB_200_2011/image_class_labels.txt"] = "\n".join(lines)
    with pytest.raises(DataError, match=r"image_class_labels\.txt:2: expected 2 fields"):
        build("cub", str(write_files(tmp_path / "cub", files)), tmp_path=tmp_path)


def test_cub_class_id_out_of_range(tmp_path):
    files, _ = cub_files()
    files["CUB_200_2011/image_class_labels.txt"] += "13 9\n"
    files["CUB_200_2011/images.txt"] += "13 004.Bird_4/img_0.jpg\n"
    with pytest.raises(DataError, match=r"image_class_labels\.txt:13: class id 9 out of range"):
        build("cub", str(write_files(tmp_path / "cub", files)), tmp_path=tmp_path)


@pytest.mark.parametrize("name,line,pattern", [
    ("images.txt", "5 001.Bird_1/img_2.jpg", r"images\.txt:13: duplicate image_id 5 \(first listed at .*images\.txt:\d+\)"),
    ("image_class_labels.txt", "5 1", r"image_class_labels\.txt:13: duplicate image_id 5 \(first listed at "),
    ("classes.txt", "3 003.Renamed", r"classes\.txt:5: duplicate class_id 3 \(first listed at .*classes\.txt:3\)"),
    ("train_test_split.txt", "5 0", r"train_test_split\.txt:13: duplicate image_id 5 \(first listed at "),
])
def test_cub_duplicate_keys_are_errors(tmp_path, name, line, pattern):
    files, _ = cub_files()
    files["CUB_200_2011/train_test_split.txt"] = "".join(f"{k} {k % 2}\n" for k in range(1, 13))
    build("cub", str(write_files(tmp_path / "ok", files)), tmp_path=tmp_path)  # the official layout builds
    files["CUB_200_2011/" + name] += line + "\n"
    with pytest.raises(DataError, match=pattern):
        build("cub", str(write_files(tmp_path / "cub", files)), tmp_path=tmp_path)


def test_missing_corrupt_truncated_images_fail_or_are_skipped(tmp_path):
    files, _ = cub_files()
    jpg = files["CUB_200_2011/images/001.Bird_1/img_1.jpg"]
    files["CUB_200_2011/images/001.Bird_1/img_1.jpg"] = jpg[: len(jpg) // 2]  # truncated
    files["CUB_200_2011/images/003.Bird_3/img_0.jpg"] = b"not an image at all"  # corrupt
    del files["CUB_200_2011/images/004.Bird_4/img_2.jpg"]  # missing
    for container in ("folder", "archive"):
        root = tmp_path / container
        data_dir = write_files(root, files) if container == "folder" else write_archive(tmp_path / "CUB.tgz", files)
        with pytest.raises(DataError) as err:
            build("cub", str(data_dir), tmp_path=tmp_path)
        msg = str(err.value)
        assert "3 bad image record(s)" in msg and "skip_bad_images" in msg
        assert "001.Bird_1/img_1.jpg" in msg and "003.Bird_3/img_0.jpg" in msg and "not found" in msg
        assert "image_class_labels.txt:" in msg  # the annotation line that listed it
        with pytest.warns(UserWarning, match="skipped 3 bad image"):
            ds = build("cub", str(data_dir), tmp_path=tmp_path, skip_bad_images=True)
        assert (len(ds["train"]), len(ds["test"])) == (5, 4)
    # without verification only the missing file is caught at build time
    with pytest.raises(DataError, match="1 bad image record"):
        build("cub", str(tmp_path / "folder"), tmp_path=tmp_path, verify_images=False)


def test_cut_jpeg_with_end_marker_is_reported(tmp_path):
    from modeling_hvit.data.sources import check_image

    rng = np.random.default_rng(0)
    arr = np.clip(rng.integers(0, 60, (90, 120, 3)) + np.linspace(0, 190, 120)[None, :, None], 0, 255).astype(np.uint8)
    for mode, subsampling in (("RGB", 2), ("RGB", 0), ("L", 0)):
        buf = io.BytesIO()
        Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=90, subsampling=subsampling)
        good = buf.getvalue()
        assert check_image(good) is None
        for cut in (0.3, 0.9):
            cut_file = good[: int(len(good) * cut)] + b"\xff\xd9"  # PIL decodes it: a flat grey tail
            Image.open(io.BytesIO(cut_file)).load()
            assert "truncated JPEG" in check_image(cut_file)
    files, _ = cub_files()
    files["CUB_200_2011/images/002.Bird_2/img_0.jpg"] = good[: len(good) // 2] + b"\xff\xd9"
    root = write_files(tmp_path / "cub", files)
    with pytest.raises(DataError, match=r"002\.Bird_2/img_0\.jpg: truncated JPEG"):
        build("cub", str(root), tmp_path=tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        assert len(build("cub", str(root), tmp_path=tmp_path, skip_bad_images=True)["train"]) == 5


def test_duplicate_paths_reported(tmp_path):
    files, _ = cub_files()
    files["CUB_200_2011/images.txt"] += "13 001.Bird_1/img_0.jpg\n"
    files["CUB_200_2011/image_class_labels.txt"] += "13 1\n"
    root = write_files(tmp_path / "cub", files)
    with pytest.raises(DataError, match=r"image_class_labels\.txt:13: duplicate image path .*first listed at"):
        build("cub", str(root), tmp_path=tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        assert len(build("cub", str(root), tmp_path=tmp_path, skip_bad_images=True)["train"]) == 6


def test_wrong_or_broken_archive(tmp_path):
    other = write_archive(tmp_path / "something.zip", {"a/b.txt": "hello"})
    with pytest.raises(DataError, match=r"something\.zip: no image_class_labels\.txt found \(expected the CUB-200-2011"):
        build("cub", str(other), tmp_path=tmp_path)
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match=r"broken\.tgz: not a readable archive"):
        build("cub", str(broken), tmp_path=tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="expected a folder or an archive"):
        build("cub", str(tmp_path / "notes.txt"), tmp_path=tmp_path)
    with pytest.raises(DataError, match="no such file"):
        build("cub", str(tmp_path / "absent"), tmp_path=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'cubb'"):
        build_dataset("cubb", str(tmp_path))


def test_extracted_folder_wins_over_its_archive(tmp_path):
    files, _ = cub_files()
    root = write_files(tmp_path / "cub", files)
    (root / "CUB_200_2011.tgz").write_bytes(b"broken, but shadowed by the extracted CUB_200_2011/")
    ds = build("cub", str(root), tmp_path=tmp_path)
    assert Path(ds["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]["path"]).is_file()
    with pytest.raises(ValueError, match="needs data_dir"):
        build_dataset("cub")


# -- Cars ----------------------------------------------------------------------------------------------
def cars_files(tmp_path, classes=(1, 1, 2, 2, 3, 3, 4, 4, 4), n_names=4):
    from scipy.io import savemat

    paths = [f"car_ims/{i + 1:06d}.jpg" for i in range(len(classes))]
    ann = np.zeros((1, len(classes)), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    for i, (p, c) in enumerate(zip(paths, classes)):
        ann[0, i] = (p, np.array([[c]], dtype=np.uint8), np.array([[i % 2]], dtype=np.uint8))
    names = np.array([f"Car {k}" for k in range(1, n_names + 1)], dtype=object).reshape(1, -1)
    buf = io.BytesIO()
    savemat(buf, {"annotations": ann, "class_names": names})
    (tmp_path / "cars").mkdir()
    (tmp_path / "cars" / "cars_annos.mat").write_bytes(buf.getvalue())
    write_archive(tmp_path / "cars" / "car_ims.tgz", {p: image_bytes(i) for i, p in enumerate(paths)})
    return tmp_path / "cars"


def test_cars_classes_first_half_train(tmp_path):
    ds = build("cars", str(cars_files(tmp_path)), tmp_path=tmp_path)
    assert ds["train"].features["label"].names == ["Car 1", "Car 2", "Car 3", "Car 4"]
    assert dataset_labels(ds["train"]) == [0, 0, 1, 1] and dataset_labels(ds["test"]) == [2, 2, 3, 3, 3]


def test_cars_class_out_of_range(tmp_path):
    with pytest.raises(DataError, match=r"cars_annos\.mat: annotations\[2\]: class 7 out of range \(expected 1\.\.4\)"):
        build("cars", str(cars_files(tmp_path, classes=(1, 2, 7, 3, 4))), tmp_path=tmp_path)


def test_cars_duplicate_image_or_class_name(tmp_path):
    root = cars_files(tmp_path)
    from scipy.io import loadmat, savemat

    mat = loadmat(root / "cars_annos.mat")
    ann = mat["annotations"]
    ann[0, 4]["relative_im_path"] = ann[0, 1]["relative_im_path"]
    savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": mat["class_names"]})
    with pytest.raises(DataError, match=r"annotations\[4\]: duplicate relative_im_path car_ims/000002\.jpg "
                                        r"\(first listed at .*annotations\[1\]\)"):
        build("cars", str(root), tmp_path=tmp_path)
    names = mat["class_names"].copy()
    names[0, 2] = names[0, 0]
    savemat(root / "cars_annos.mat", {"annotations": mat["annotations"], "class_names": names})
    with pytest.raises(DataError, match=r"class_names\[2\]: duplicate class name Car 1"):
        build("cars", str(root), tmp_path=tmp_path)


# -- SOP -----------------------------------------------------------------------------------------------
def sop_files(test_classes=(3, 4)):
    header = "image_id class_id super_class_id path\n"
    supers = {1: "bicycle", 2: "cabinet"}
    files, train, test = {}, [header], [header]
    k = 0
    for cid, sid in ((1, 1), (2, 2), (3, 1), (4, 2)):
        for j in range(2):
            k += 1
            rel = f"{supers[sid]}_final/{cid}_{j}.JPG"
            files[rel] = image_bytes(k)
            (train if cid not in test_classes else test).append(f"{k} {cid} {sid} {rel}\n")
    files["Ebay_train.txt"], files["Ebay_test.txt"] = "".join(train), "".join(test)
    return files


def test_sop_splits_and_superclass(tmp_path):
    ds = build("sop", str(write_archive(tmp_path / "Stanford_Online_Products.zip",
                                        {f"Stanford_Online_Products/{k}": v for k, v in sop_files().items()})),
               tmp_path=tmp_path)
    names = ds["train"].features["label"].names
    assert [names[y] for y in dataset_labels(ds["train"])] == ["1", "1", "2", "2"]
    assert [names[y] for y in dataset_labels(ds["test"])] == ["3", "3", "4", "4"]
    sup = ds["test"].features["superclass"]
    assert sup.names == ["bicycle", "cabinet"] and [sup.names[s] for s in ds["test"]["superclass"]] == ["bicycle"] * 2 + ["cabinet"] * 2


def test_sop_errors(tmp_path):
    files = sop_files()
    files["Ebay_test.txt"] += "99 4 2\n"
    with pytest.raises(DataError, match=r"Ebay_test\.txt:6: expected 4 fields"):
        build("sop", str(write_files(tmp_path / "a", files)), tmp_path=tmp_path)
    files = sop_files()
    files["Ebay_test.txt"] += "9 1 1 bicycle_final/1_0.JPG\n"  # class 1 is a train class
    with pytest.raises(DataError, match=r"Ebay_test\.txt:6: class '1' of split 'test' also appears in 'train'"):
        build("sop", str(write_files(tmp_path / "b", files)), tmp_path=tmp_path)


def test_sop_duplicate_image_id(tmp_path):
    files = sop_files()
    files["Ebay_train.txt"] += "3 2 2 cabinet_final/2_9.JPG\n"
    files["cabinet_final/2_9.JPG"] = image_bytes(50)
    with pytest.raises(DataError, match=r"Ebay_train\.txt:6: duplicate image_id 3 \(first listed at .*Ebay_train\.txt:4\)"):
        build("sop", str(write_files(tmp_path / "a", files)), tmp_path=tmp_path)


# -- In-Shop -------------------------------------------------------------------------------------------
def inshop_files(count=None, status_override=None):
    rows = [("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
            ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
            ("img/MEN/Denim/id_00000002/01_1_front.jpg", "id_00000002", "query"),
            ("img/MEN/Denim/id_00000002/01_2_side.jpg", "id_00000002", "gallery"),
            ("img/WOMEN/Tees/id_00000003/01_1_front.jpg", "id_00000003", "query"),
            ("img/WOMEN/Tees/id_00000003/01_3_back.jpg", "id_00000003", status_override or "gallery")]
    text = f"{count or len(rows)}\nimage_name item_id evaluation_status\n" + "".join(f"{a} {b} {c}\n" for a, b, c in rows)
    return {"Eval/list_eval_partition.txt": text}, {r[0]: image_bytes(i) for i, r in enumerate(rows)}


def test_inshop_three_splits_with_category(tmp_path):
    ann, images = inshop_files()
    root = write_files(tmp_path / "inshop", ann)
    (root / "Img").mkdir()
    write_archive(root / "Img" / "img.zip", images)  # the official Img/img.zip, read without unpacking
    ds = build("inshop", str(root), tmp_path=tmp_path)
    assert {k: len(v) for k, v in ds.items()} == {"train": 2, "query": 2, "gallery": 2}
    names, cats = ds["query"].features["label"].names, ds["query"].features["category"].names
    assert [names[y] for y in dataset_labels(ds["query"])] == ["id_00000002", "id_00000003"]
    assert [cats[c] for c in ds["gallery"]["category"]] == ["MEN/Denim", "WOMEN/Tees"]


def test_inshop_errors(tmp_path):
    ann, images = inshop_files(count=9)
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:1: declares 9 images but lists 6"):
        build("inshop", str(write_files(tmp_path / "a", {**ann, **{"Img/" + k: v for k, v in images.items()}})), tmp_path=tmp_path)
    ann, images = inshop_files(status_override="val")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:8: evaluation_status 'val'"):
        build("inshop", str(write_files(tmp_path / "b", {**ann, **{"Img/" + k: v for k, v in images.items()}})), tmp_path=tmp_path)


def test_inshop_duplicate_image_name(tmp_path):
    ann, images = inshop_files()
    lines = ann["Eval/list_eval_partition.txt"].splitlines()
    lines[0] = "7"
    lines.append("img/WOMEN/Dresses/id_00000001/01_2_side.jpg id_00000001 train")
    ann["Eval/list_eval_partition.txt"] = "\n".join(lines) + "\n"
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:9: duplicate image_name img/WOMEN/Dresses/"
                                        r"id_00000001/01_2_side\.jpg \(first listed at .*list_eval_partition\.txt:4\)"):
        build("inshop", str(write_files(tmp_path / "a", {**ann, **{"Img/" + k: v for k, v in images.items()}})), tmp_path=tmp_path)


# -- Omniglot, Caltech, folder, hub ---------------------------------------------------------------------
def test_omniglot_zips(tmp_path):
    for split, alphabets in (("images_background", ("Latin", "Greek")), ("images_evaluation", ("Tengwar",))):
        write_archive(tmp_path / f"{split}.zip", {f"{split}/{a}/character{c:02d}/{i:02d}.png": image_bytes(i + c, "PNG", "1")
                                                  for a in alphabets for c in (1, 2) for i in (1, 2, 3)})
    ds = build("omniglot", str(tmp_path), tmp_path=tmp_path)
    assert (len(ds["train"]), len(ds["test"])) == (12, 6)
    names = ds["train"].features["label"].names
    assert names == ["Greek/character01", "Greek/character02", "Latin/character01", "Latin/character02",
                     "Tengwar/character01", "Tengwar/character02"]
    alpha = ds["train"].features["alphabet"].names
    assert [alpha[a] for a in ds["test"]["alphabet"]] == ["Tengwar"] * 6
    assert ds["test"][0]["image"].mode == "1"


def caltech_files():
    classes = ["Faces", "accordion", "ant", "bass", "yin_yang"]
    files = {f"101_ObjectCategories/{c}/image_{i:04d}.jpg": image_bytes(k * 10 + i) for k, c in enumerate(classes) for i in (1, 2)}
    files["101_ObjectCategories/BACKGROUND_Google/image_0001.jpg"] = image_bytes(99)
    return files


def test_caltech_tar_drops_background_and_splits_sorted_halves(tmp_path):
    ds = build("caltech101", str(write_archive(tmp_path / "101_ObjectCategories.tar", caltech_files())), tmp_path=tmp_path)
    names = ds["train"].features["label"].names
    assert names == ["Faces", "accordion", "ant", "bass", "yin_yang"]  # sorted, no BACKGROUND_Google
    assert sorted(set(dataset_labels(ds["train"]))) == [0, 1] and sorted(set(dataset_labels(ds["test"]))) == [2, 3, 4]


def test_folder_rules(tmp_path):
    files = {f"wrap/{c}/{i}.png": image_bytes(i, "PNG") for c in ("b", "a", "d", "c") for i in range(2)}
    files["wrap/a/notes.txt"] = "ignored"
    ds = build("folder", str(write_archive(tmp_path / "imgs.zip", files)), tmp_path=tmp_path)  # single wrapper folder descended
    assert ds["train"].features["label"].names == ["a", "b", "c", "d"]
    assert (len(ds["train"]), len(ds["test"])) == (4, 4)
    ds = build("folder", str(write_files(tmp_path / "f", files)), tmp_path=tmp_path, train_fraction=0.75)
    assert sorted(set(dataset_labels(ds["train"]))) == [0, 1, 2] and dataset_labels(ds["test"]) == [3, 3]
    given = {f"{s}/{c}/{i}.png": image_bytes(i, "PNG") for s, cs in (("train", "ab"), ("test", "cd")) for c in cs for i in range(2)}
    ds = build("folder", str(write_files(tmp_path / "g", given)), tmp_path=tmp_path, split_rule="given")
    assert ds["test"].features["label"].names == ["a", "b", "c", "d"] and dataset_labels(ds["test"]) == [2, 2, 3, 3]
    given["test/a/9.png"] = image_bytes(9, "PNG")
    with pytest.raises(DataError, match="class 'a' of split 'test' also appears in 'train'"):
        build("folder", str(write_files(tmp_path / "h", given)), tmp_path=tmp_path, split_rule="given")


@pytest.mark.skipif(os.name != "posix", reason="file names with invalid UTF-8 bytes need a POSIX file system")
def test_non_utf8_names_are_stored_escaped(tmp_path):
    names = [(b"caf\xe9", b"a.png"), (b"caf\xe9", b"b.png"), (b"ok", b"img\xff.png"), (b"ok", b"x.png"),
             (b"b", b"1.png"), (b"c", b"1.png")]
    folder = tmp_path / "f"
    data = {}
    for k, (cls, name) in enumerate(names):
        os.makedirs(os.path.join(os.fsencode(folder), cls), exist_ok=True)
        data[os.fsdecode(cls + b"/" + name)] = image_bytes(k, "PNG")
        with open(os.path.join(os.fsencode(folder), cls, name), "wb") as fh:
            fh.write(data[os.fsdecode(cls + b"/" + name)])
    archive = tmp_path / "f.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for rel, blob in sorted(data.items()):
            info = tarfile.TarInfo(rel)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    want = {"b": [4], "c": [5], "caf\\xe9": [0, 1], "ok": [2, 3]}
    for root in (folder, archive):
        with pytest.warns(UserWarning, match=r"1 class name\(s\) are not valid UTF-8; stored with .*caf\\\\xe9"):
            ds = build("folder", str(root), tmp_path=tmp_path)
        names_ = ds["train"].features["label"].names
        assert names_ == ["b", "c", "caf\\xe9", "ok"]
        for split in ("train", "test"):
            for row in ds[split]:
                pixels = [np.asarray(Image.open(io.BytesIO(image_bytes(k, "PNG")))) for k in want[names_[row["label"]]]]
                assert any(np.array_equal(np.asarray(row["image"]), p) for p in pixels)
        paths = [r["image"]["path"] for r in ds["test"].cast_column("image", datasets.Image(decode=False))]
        assert any(p.endswith("ok/img\\xff.png") for p in paths)


def test_hub_dataset_by_name_with_columns(tmp_path):
    ims = [Image.open(io.BytesIO(image_bytes(i, "PNG"))) for i in range(12)]
    feats = datasets.Features({"img": datasets.Image(), "fine": datasets.Value("int64"), "coarse": datasets.Value("string")})
    for split, rows in (("train", range(0, 8)), ("test", range(8, 12))):
        d = datasets.Dataset.from_dict({"img": [ims[i] for i in rows], "fine": [10 + i // 2 for i in rows],
                                        "coarse": ["x" if i < 6 else "y" for i in rows]}, features=feats)
        d.to_parquet(str(tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    kw = dict(image_column="img", label_column="fine", hierarchy_column="coarse", tmp_path=tmp_path)
    ds = build(f"hub:{tmp_path / 'repo'}", **kw)
    names = ds["train"].features["label"].names
    assert names == [str(c) for c in range(10, 16)]
    assert sorted({names[y] for y in dataset_labels(ds["train"])}) == ["10", "11", "12"]
    assert sorted({names[y] for y in dataset_labels(ds["test"])}) == ["13", "14", "15"]
    assert set(ds["train"].column_names) == {"image", "label", "coarse"}
    given = build(f"hub:{tmp_path / 'repo'}", split_rule="given", **kw)
    assert len(given["train"]) == 8 and len(given["test"]) == 4
    with pytest.raises(DataError, match="no column 'pic'"):
        build(f"hub:{tmp_path / 'repo'}", image_column="pic", tmp_path=tmp_path)


# -- real data ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_omniglot(tmp_path):
    ds = build("omniglot", str(real_data("omniglot")), tmp_path=tmp_path)
    train, test = dataset_labels(ds["train"]), dataset_labels(ds["test"])
    assert (len(train), len(test)) == (19280, 13180)
    assert (len(set(train)), len(set(test))) == (964, 659) and not set(train) & set(test)
    assert len(ds["train"].features["alphabet"].names) == 50


@pytest.mark.slow
def test_real_caltech101(tmp_path):
    ds = build("caltech101", str(real_data("caltech101")), tmp_path=tmp_path)
    train, test = dataset_labels(ds["train"]), dataset_labels(ds["test"])
    names = ds["train"].features["label"].names
    assert len(names) == 101 and "BACKGROUND_Google" not in names and names == sorted(names)
    assert len(train) + len(test) == 8677 and not set(train) & set(test)
    assert (len(set(train)), len(set(test))) == (50, 51)
    out = with_image_transform(ds["train"].shuffle(seed=0).select(range(32)), TrainTransform(224, (0.5,) * 3, (0.5,) * 3, seed=0))
    batch = torch.stack([out[i]["pixel_values"] for i in range(32)])
    assert batch.shape == (32, 3, 224, 224)
    pixels = batch * 0.5 + 0.5  # back to [0, 1]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert 0.2 < pixels.mean() < 0.8 and pixels.std() > 0.1


@pytest.mark.slow
def test_training_without_verification_names_a_bad_image_or_replaces_it(tmp_path):
    from modeling_hvit.training import main

    files = {f"{c}/{i}.png": image_bytes(10 * k + i, "PNG", size=(20, 20)) for k, c in enumerate("abcd") for i in range(4)}
    files["d/0.png"] = b"\x89PNG\r\n\x1a\n but cut"  # a test image: the first evaluation decodes it
    root = write_files(tmp_path / "imgs", files)
    args = ["--dataset", "folder", "--data_dir", str(root), "--verify_images", "false", "--max_steps", "1",
            "--per_device_train_batch_size", "4", "--samples_per_class", "2", "--report_to", "none",
            "--disable_tqdm", "true", "--dataloader_num_workers", "0"]
    with pytest.raises(DataError, match=r"d/0\.png'? is not readable .*skip_bad_images"):
        main(args + ["--output_dir", str(tmp_path / "a")])
    with pytest.warns(UserWarning, match=r"d/0\.png'? is not readable .*replaced by .*d/1\.png.*1 replaced so far"):
        main(args + ["--output_dir", str(tmp_path / "b"), "--skip_bad_images", "true"])
    assert (tmp_path / "b" / "model.safetensors").is_file()
