"""Source readers: turn a data source string into uint8 arrays for `runner.data` to write.

Reads (never writes) one of:
  kaggle:DIR     DIR/train/*.{png,jpg,..} + DIR/train.csv (id,label); optional DIR/test/ + DIR/sample_submission.csv
  folder:DIR     class sub-folders (DIR/<class>/* or DIR/train/<class>/*); optional DIR/test/: flat (unlabeled) or
                 DIR/test/<class>/* (labeled: a solution file is written)
  cifar10, cifar100   torchvision's datasets (download, or `from_dir` holding the extracted batches)
  parquet:FILE   columns image (encoded JPEG/PNG), label (int), split (train/test), optional label_name, id, source_path
  synthetic[:N]  built-in procedurally drawn 10-class set (runner/data/synthetic.py)
`read_source(...)` returns a `SourceData`; every refusal is a `DataError` naming the file, row or id and the fix
(an empty split, an empty class, and a class far rarer than the rest included: runner/data/classes.py).
Used by `runner data prepare` (through `runner.data.prepare`) and by the loaders for `synthetic[:N]`.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from runner.data.classes import check_classes, listing
from runner.data.split import DataError, Split

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class SourceData:
    classes: list[str]
    train: Split
    test: Split | None
    test_ids: list[str] | None  # the order a submission must follow, when the source fixes one
    label_names_are_ints: bool  # labels were integers in the source: submissions write them as ints
    source: str  # canonical source string (absolute paths)


def read_source(source: str, *, size: int = 32, resize: bool = False, from_dir: str | None = None,
                allow_rare_classes: bool = False) -> SourceData:
    """Read `source` into `size`x`size` RGB images; other sizes are an error unless `resize`. A class far
    rarer than the others is refused unless `allow_rare_classes`."""
    kind, _, arg = source.partition(":")
    if kind == "synthetic":
        from runner.data.synthetic import synthetic, synthetic_n  # they build on this module's types

        return _check_size(synthetic(synthetic_n(source)), size, resize)
    if kind in ("cifar10", "cifar100") and not arg:
        from runner.data.bundles import cifar

        return _check_size(cifar(kind, from_dir), size, resize)
    if kind in ("kaggle", "folder", "parquet") and arg:
        from runner.data.bundles import parquet

        reader = {"kaggle": _kaggle, "folder": _folder, "parquet": parquet}[kind]
        return reader(os.path.abspath(arg), size, resize, allow_rare_classes)
    raise DataError(f"unknown data source {source!r}: use kaggle:DIR, folder:DIR, parquet:FILE, cifar10, "
                    "cifar100 or synthetic[:N]")


# ---------------------------------------------------------------- decoding and checks
def decode_all(srcs: list, names: list[str], size: int, resize: bool) -> np.ndarray:
    out = np.empty((len(srcs), size, size, 3), dtype=np.uint8)
    for i, (src, name) in enumerate(zip(srcs, names, strict=True)):
        out[i] = _decode(src, name, size, resize)
    return out


def _decode(src: str | bytes, name: str, size: int, resize: bool) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            rgb = im.convert("RGB")  # forces the full decode, so truncated files fail here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"corrupt image {name}: {e}; replace or delete it") from e
    if rgb.size != (size, size):
        if not resize:
            w, h = rgb.size
            raise DataError(f"image {name} is {w}x{h}, expected {size}x{size}; pass --resize to resize every image")
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)  # squashes; aspect ratio not kept
    return np.asarray(rgb, dtype=np.uint8)


def _check_size(data: SourceData, size: int, resize: bool) -> SourceData:
    """Array sources (cifar, synthetic) are 32x32: resize them only when asked."""
    for part in (data.train, data.test):
        if part is None or part.images.shape[1:3] == (size, size):
            continue
        h, w = part.images.shape[1:3]
        if not resize:
            raise DataError(f"{data.source} images are {w}x{h}, expected {size}x{size}; pass --resize")
        resized = [np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC))
                   for a in part.images.numpy()]
        part.images = Split.of(np.stack(resized), part.labels, part.ids).images
    return data


def first_duplicate(keys: list[str]) -> tuple[int, int] | None:
    """Positions (first, second) of the first key seen twice, or None."""
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            return seen[k], i
        seen[k] = i
    return None


def _require_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise DataError(f"data directory not found: {path}; check the path in the source string")
    return path


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def strip_ext(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTS else name


def _image_files(d: str) -> dict[str, str]:
    """Map id (file name without extension) -> path for the images directly in `d`."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(d), key=_natural_key):
        path = os.path.join(d, name)
        if name.startswith(".") or not os.path.isfile(path) or os.path.splitext(name)[1].lower() not in IMAGE_EXTS:
            continue
        stem = strip_ext(name)
        if stem in found:
            raise DataError(f"duplicate id {stem!r}: {found[stem]} and {path}; keep one of them")
        found[stem] = path
    return found


def _read_csv(path: str, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the header is line 1. utf-8-sig: Excel-written files start with a BOM."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks column(s) {missing}; its header must be {','.join(columns)}")
        return [(i + 2, {k: (v or "").strip() for k, v in row.items() if k}) for i, row in enumerate(reader)]


# ---------------------------------------------------------------- kaggle:DIR
def _kaggle(root: str, size: int, resize: bool, allow_rare: bool) -> SourceData:
    _require_dir(root)
    train_dir, csv_path = os.path.join(root, "train"), os.path.join(root, "train.csv")
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path} not found; a kaggle:DIR source needs DIR/train.csv with columns id,label")
    files = _image_files(_require_dir(train_dir))
    rows = _read_csv(csv_path, ("id", "label"))
    ids = [row["id"] for _, row in rows]
    keys = [strip_ext(i) for i in ids]
    if dup := first_duplicate(keys):
        a, b = (rows[j][0] for j in dup)
        raise DataError(f"duplicate id {ids[dup[1]]!r} in {csv_path} (lines {a} and {b}); keep one row")
    for (line, _), key in zip(rows, keys, strict=True):
        if key not in files:
            raise DataError(f"{csv_path} line {line}: id {key!r} has no image in {train_dir}; add it or drop the row")
    key_set = set(keys)
    if unlabeled := [p for k, p in files.items() if k not in key_set]:
        raise DataError(f"{len(unlabeled)} unlabeled image(s) in {train_dir} have no row in {csv_path}: "
                        f"{listing(unlabeled)}; add rows for them or delete the files")
    names = [row["label"] for _, row in rows]
    ints = [re.fullmatch(r"-?\d+", n) is not None for n in names]
    label_names_are_ints = all(ints)
    for (line, _), name, is_int in zip(rows, names, ints, strict=True):
        # Integers mixed with names almost always mean a typo; negative ints are never classes.
        if name == "" or (is_int and (not label_names_are_ints or int(name) < 0)):
            raise DataError(f"unknown label {name!r} for id {ids[line - 2]!r} ({csv_path} line {line}); labels "
                            "must be all class names or all integers >= 0")
    if label_names_are_ints:
        labels = np.array([int(n) for n in names], dtype=np.int64)
        classes = [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
    else:
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[n] for n in names], dtype=np.int64)
    check_classes(classes, labels, csv_path, lambda i: f"line {rows[i][0]} (id {ids[i]!r})", allow_rare=allow_rare)
    paths = [files[k] for k in keys]
    train = Split.of(decode_all(paths, paths, size, resize), labels, ids)
    test, test_ids = _kaggle_test(root, size, resize)
    return SourceData(classes, train, test, test_ids, label_names_are_ints, f"kaggle:{root}")


def _kaggle_test(root: str, size: int, resize: bool) -> tuple[Split | None, list[str] | None]:
    test_dir, sub_path = os.path.join(root, "test"), os.path.join(root, "sample_submission.csv")
    has_dir, has_sub = os.path.isdir(test_dir), os.path.isfile(sub_path)
    if not has_dir and not has_sub:
        return None, None
    if not has_dir:
        raise DataError(f"{sub_path} exists but {test_dir} does not; add the test images or remove the csv")
    if not (files := _image_files(test_dir)):
        raise DataError(f"{test_dir} holds no images: an empty test split; add the test images or remove the folder")
    ids, test_ids = list(files), None  # without a sample_submission: natural file-name order
    if has_sub:
        ids = test_ids = [row["id"] for _, row in _read_csv(sub_path, ("id",))]
        keys = [strip_ext(i) for i in ids]
        if dup := first_duplicate(keys):
            raise DataError(f"duplicate id {ids[dup[1]]!r} in {sub_path} (lines {dup[0] + 2} and {dup[1] + 2})")
        no_file = [i for i, k in zip(ids, keys, strict=True) if k not in files]
        key_set = set(keys)
        extra = [p for k, p in files.items() if k not in key_set]
        if no_file or extra:
            raise DataError(f"test ids do not match {sub_path}: {len(no_file)} id(s) have no image in {test_dir} "
                            f"[{listing(no_file)}]; {len(extra)} image(s) are not in the csv [{listing(extra)}]; "
                            "the csv must list every test image once, by file name without extension")
    paths = [files[strip_ext(i)] for i in ids]
    images = decode_all(paths, paths, size, resize)
    return Split.of(images, np.full(len(ids), -1, dtype=np.int64), ids), test_ids


# ---------------------------------------------------------------- folder:DIR
def _folder(root: str, size: int, resize: bool, allow_rare: bool) -> SourceData:
    """ImageFolder layout: DIR/<class>/<image> or DIR/train/<class>/<image>; DIR/test/ holds the test split,
    flat (unlabeled) or per class. Ids are <class>/<file stem>, because file names often repeat across classes."""
    _require_dir(root)
    train_root = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    classes = _class_dirs(train_root)
    if not classes:
        raise DataError(f"no class sub-folders in {train_root}; put each class's images in DIR/<class>/")
    if stray := list(_image_files(train_root).values()):
        raise DataError(f"unlabeled image(s) directly in {train_root}: {listing(stray)}; put them in class folders")
    train = _class_images(train_root, classes, classes, size, resize)
    check_classes(classes, train.labels.numpy(), train_root, lambda i: f"{train_root}/{train.ids[i]}",
                  allow_rare=allow_rare)
    test = _folder_test(os.path.join(root, "test"), classes, size, resize)
    return SourceData(classes, train, test, None, False, f"folder:{root}")


def _class_dirs(d: str) -> list[str]:
    return sorted((c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)) and c != "test"
                   and not c.startswith(".")), key=_natural_key)


def _class_images(d: str, folders: list[str], classes: list[str], size: int, resize: bool) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    found = [(f"{c}/{k}", path, index[c]) for c in folders for k, path in _image_files(os.path.join(d, c)).items()]
    paths = [f[1] for f in found]
    return Split.of(decode_all(paths, paths, size, resize), np.array([f[2] for f in found], dtype=np.int64),
                    [f[0] for f in found])


def _folder_test(test_root: str, classes: list[str], size: int, resize: bool) -> Split | None:
    """DIR/test/*: unlabeled, ids are file stems; DIR/test/<class>/*: labeled, ids <class>/<stem> like train."""
    if not os.path.isdir(test_root):
        return None
    flat, folders = _image_files(test_root), _class_dirs(test_root)
    if flat and folders:
        raise DataError(f"{test_root} mixes images ({listing(list(flat.values()))}) and class folders "
                        f"({listing(folders)}); use one layout: test/*.png or test/<class>/*.png")
    if unknown := [c for c in folders if c not in classes]:
        raise DataError(f"test class folder(s) {listing([repr(c) for c in unknown])} in {test_root} are not "
                        f"training classes ({listing(classes)}); rename or remove them")
    if folders:
        test = _class_images(test_root, folders, classes, size, resize)
    else:
        paths = list(flat.values())
        test = Split.of(decode_all(paths, paths, size, resize), np.full(len(paths), -1, np.int64), list(flat))
    if len(test) == 0:
        raise DataError(f"{test_root} holds no images: an empty test split; add the test images or remove the folder")
    return test
