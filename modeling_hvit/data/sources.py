# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""A dataset root seen as one tree of files, whether extracted or still inside archives.

Official releases ship as folders or as archives (``CUB_200_2011.tgz``, ``car_ims.tgz``, Omniglot's
``images_background.zip``, ``101_ObjectCategories.tar``). :class:`FileTree` lists both the same way:
relative POSIX paths mapped to where the bytes live. An archive is "mounted" at its parent folder,
unless a sibling folder with the archive's stem exists (then the extracted copy is used). Builders
then locate their annotation files in the tree and never care which form the user has.

Images on disk are stored in the dataset as paths; images inside archives as bytes read straight
from the members (no extraction to disk). Verification (:func:`check_image`) is cheap: PIL parses the
header and we check that the file is complete (JPEG end-of-image marker, PNG chunk CRCs up to IEND),
decoding fully only when that quick check is inconclusive.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")
ANNOTATION_SUFFIXES = (".txt", ".mat", ".csv", ".json")
SMALL_FILE = 64 << 20  # bytes; annotation files above this are re-read from the archive
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataError(ValueError):
    """Malformed dataset: the message names the file (and line) and what was expected."""


def archive_stem(name: str) -> str | None:
    """``'car_ims.tgz'`` → ``'car_ims'``; ``None`` when ``name`` is not an archive."""
    low = name.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def safe_text(name: str) -> str:
    """A file name as storable text: bytes that are not UTF-8 (``os.fsdecode`` keeps them as lone
    surrogates, which Arrow and terminals reject) become ``\\xNN`` escapes; other names are unchanged."""
    if name.isascii():
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Entry:
    """Where a file of the tree lives: on disk (``archive is None``) or as a member of an archive."""

    location: str  # absolute path on disk, or the member name inside ``archive``
    archive: str | None = None

    def describe(self) -> str:
        return safe_text(self.location if self.archive is None else f"{self.archive}:{self.location}")


class FileTree:
    """Relative POSIX path → :class:`Entry`, over a folder (with mounted archives) or one archive."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.entries: dict[str, Entry] = {}
        self._small: dict[str, bytes] = {}
        if not self.root.exists():
            raise DataError(f"{self.root}: no such file or directory (expected the dataset folder or archive)")
        if self.root.is_file():
            if archive_stem(self.root.name) is None:
                raise DataError(f"{self.root}: expected a folder or an archive ({', '.join(ARCHIVE_SUFFIXES)})")
            self._mount(self.root, "")
        else:
            self._walk()

    # -- building -------------------------------------------------------------------------------
    def _walk(self) -> None:
        archives = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            for name in sorted(filenames):
                stem = archive_stem(name)
                if stem is not None:
                    if stem not in dirnames:  # an extracted sibling folder wins
                        archives.append((Path(dirpath) / name, prefix))
                    continue
                self.entries[prefix + name] = Entry(str(Path(dirpath) / name))
        for path, prefix in archives:
            self._mount(path, prefix)

    def _mount(self, path: Path, prefix: str) -> None:
        members, small = list_archive(path)
        for name in members:
            self.entries.setdefault(prefix + name, Entry(name, str(path)))
        for name, data in small.items():  # annotation files of compressed tars, kept from the listing pass
            self._small[prefix + name] = data

    # -- queries --------------------------------------------------------------------------------
    def __contains__(self, rel: str) -> bool:
        return rel in self.entries

    def __getitem__(self, rel: str) -> Entry:
        return self.entries[rel]

    def find(self, name: str, what: str) -> str:
        """The folder prefix (``''`` or ``'a/b/'``) of the shallowest file called ``name``."""
        hits = [p for p in self.entries if p == name or p.endswith("/" + name)]
        if not hits:
            raise DataError(f"{self.root}: no {name} found (expected the {what} layout)")
        best = min(hits, key=lambda p: (p.count("/"), p))
        return best[: -len(name)]

    def read_bytes(self, rel: str) -> bytes:
        if rel in self._small:
            return self._small[rel]
        return read_entry(self.entries[rel])

    def read_text(self, rel: str) -> str:
        try:
            return self.read_bytes(rel).decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{self.entries[rel].describe()}: not UTF-8 text ({err})") from None

    def image_value(self, rel: str) -> dict:
        """What goes into a ``datasets.Image()`` column: a path on disk, or the member's bytes."""
        entry = self.entries[rel]
        if entry.archive is None:
            return {"path": entry.location, "bytes": None}
        return {"path": rel, "bytes": read_entry(entry)}


def list_archive(path: Path) -> tuple[list[str], dict[str, bytes]]:
    """Regular files inside a zip or tar, in stored order, plus the bytes of small annotation files
    of compressed tars (a random read there re-decompresses the archive, so keep them now)."""
    small: dict[str, bytes] = {}
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                return [i.filename for i in zf.infolist() if not i.is_dir()], small
        if not is_streaming_archive(str(path)):
            with tarfile.open(path) as tf:
                return [m.name.removeprefix("./") for m in tf.getmembers() if m.isfile()], small
        names = []
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                names.append(name)
                if name.lower().endswith(ANNOTATION_SUFFIXES) and member.size <= SMALL_FILE:
                    small[name] = tf.extractfile(member).read()
        return names, small
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{path}: not a readable archive ({err})") from None


_OPEN: dict[str, zipfile.ZipFile | tarfile.TarFile] = {}


def _archive(path: str):
    # One handle per archive and process (DataLoader workers fork after building, so this is only
    # used while building). Compressed tars are slow for random access; see iter_archive_members.
    handle = _OPEN.get(path)
    if handle is None:
        handle = zipfile.ZipFile(path) if path.lower().endswith(".zip") else tarfile.open(path)
        _OPEN[path] = handle
    return handle


def close_archives() -> None:
    """Close archive handles opened while building."""
    while _OPEN:
        _OPEN.popitem()[1].close()


def read_entry(entry: Entry) -> bytes:
    if entry.archive is None:
        return Path(entry.location).read_bytes()
    handle = _archive(entry.archive)
    if isinstance(handle, zipfile.ZipFile):
        return handle.read(entry.location)
    member = handle.extractfile(entry.location) or handle.extractfile("./" + entry.location)
    return member.read()


def is_streaming_archive(path: str) -> bool:
    """Compressed tars: reading members out of order re-decompresses from the start."""
    low = path.lower()
    return not low.endswith(".zip") and not low.endswith(".tar")


def iter_archive_members(path: str, wanted: set[str]):
    """Yield ``(member_name, bytes)`` for the wanted members in stored order (one sequential pass)."""
    if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename in wanted:
                    yield info.filename, zf.read(info)
        return
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            name = member.name.removeprefix("./")
            if member.isfile() and name in wanted:
                yield name, tf.extractfile(member).read()


# -- image verification ----------------------------------------------------------------------------
def check_image(data: bytes | None = None, path: str | None = None) -> str | None:
    """``None`` if the image is readable and complete, else a short reason.

    Cost: a header parse plus a look at the file's end; PNG chunk CRCs are checked by PIL's
    ``verify``; a complete-looking JPEG gets a DC-only decode (≈ 1 ms, :func:`_filled_jpeg_tail`);
    other formats (and JPEGs whose end marker is missing, e.g. trailing bytes) are decoded fully, so
    a corrupt or truncated file is reported while building, not during training.
    """
    try:
        if data is None:
            with open(path, "rb") as fh:
                data = fh.read()
        if len(data) == 0:
            return "empty file"
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if fmt == "PNG":
                im.verify()
                return None
            if fmt == "JPEG" and data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
                return _filled_jpeg_tail(data)
        with Image.open(io.BytesIO(data)) as im:  # inconclusive so far: decode it
            im.load()
        return None
    except FileNotFoundError:
        return "file not found"
    except Exception as err:  # PIL raises a zoo of exception types for bad data
        return f"not a readable image ({type(err).__name__}: {err})"


def _filled_jpeg_tail(data: bytes) -> str | None:
    """A cut JPEG with an end marker appended decodes without error: libjpeg fills the missing blocks
    with zero coefficients, i.e. flat mid-grey (Y = Cb = Cr = 128). A baseline file always loses its
    last block, so: decode at 1/8 scale (DC only) and, if the last block is mid-grey there, decode
    fully and report the file when that last 8x8 block is exactly flat 128 (a real photo never is).

    Limits: a progressive JPEG cut in a later scan decodes complete at lower detail (not detected);
    an image whose bottom-right 8x8 block is exactly flat (128, 128, 128) in YCbCr is reported.
    """
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("RGB", "L"):  # CMYK, YCCK: not checked
            return None
        raw = "YCbCr" if im.mode == "RGB" else "L"
        grey = (128, 128, 128) if raw == "YCbCr" else 128
        im.draft(raw, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
        if im.getpixel((im.width - 1, im.height - 1)) != grey:
            return None
    with Image.open(io.BytesIO(data)) as im:
        im.draft(raw, im.size)
        im.load()
        w, h = im.size
        block = im.crop(((w - 1) // 8 * 8, (h - 1) // 8 * 8, w, h))
        if all(lo == hi == 128 for lo, hi in ([block.getextrema()] if raw == "L" else block.getextrema())):
            return ("truncated JPEG (its last blocks decode as flat mid-grey, libjpeg's fill for missing data; "
                    "the file was cut and an end marker follows)")
    return None
