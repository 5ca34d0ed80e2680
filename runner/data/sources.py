"""Source readers: turn a data source string into uint8 arrays for `runner.data` to write.

Reads (never writes) one of:
  kaggle:DIR     DIR/train/*.{png,jpg,..} + DIR/train.csv (id,label); optional DIR/test/ + DIR/sample_submission.csv
  folder:DIR     class sub-folders (DIR/<class>/* or DIR/train/<class>/*); optional DIR/test/ (flat or per class)
  cifar10, cifar100   torchvision's datasets (download, or `from_dir` holding the extracted batches)
  parquet:FILE   columns image (encoded JPEG/PNG), label (int), split (train/test), optional label_name, id, source_path
  synthetic[:N]  built-in procedurally drawn 10-class set (runner/data/synthetic.py)
`read_source(...)` returns a `SourceData`; every refusal is a `DataError` naming the file, row or id and the fix.
Used by `runner data prepare` (through `runner.data.prepare`) and by the loaders for `synthetic[:N]`.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_SHOW = 5  # offenders listed in a message; the rest are counted


class DataError(ValueError):
    """Bad input data. The message names the file, row or id and says how to fix it."""


@dataclass
class SplitArrays:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]; -1 = unlabeled
    ids: list[str]


@dataclass
class SourceData:
    classes: list[str]
    train: SplitArrays
    test: SplitArrays | None
    test_ids: list[str] | None  # the order a submission must follow, when the source fixes one
    label_names_are_ints: bool  # labels were integers in the source: submissions write them as ints
    source: str  # canonical source string (absolute paths)


def read_source(source: str, *, size: int = 32, resize: bool = False, from_dir: str | None = None) -> SourceData:
    """Read `source` into arrays of `size`x`size` RGB images; other sizes are an error unless `resize`."""
    kind, _, arg = source.partition(":")
    if kind == "synthetic":
        from runner.data.synthetic import synthetic, synthetic_n  # it builds on this module's types

        return _check_size(synthetic(synthetic_n(source)), size, resize)
    if kind in ("cifar10", "cifar100") and not arg:
        return _check_size(_cifar(kind, from_dir), size, resize)
    if kind in ("kaggle", "folder", "parquet") and arg:
        reader = {"kaggle": _kaggle, "folder": _folder, "parquet": _parquet}[kind]
        return reader(os.path.abspath(arg), size, resize)
    raise DataError(f"unknown data source {source!r}: use kaggle:DIR, folder:DIR, parquet:FILE, cifar10, "
                    "cifar100 or synthetic[:N]")


# ---------------------------------------------------------------- decoding and checks
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


def _decode_all(srcs: list, names: list[str], size: int, resize: bool) -> np.ndarray:
    out = np.empty((len(srcs), size, size, 3), dtype=np.uint8)
    for i, (src, name) in enumerate(zip(srcs, names, strict=True)):
        out[i] = _decode(src, name, size, resize)
    return out


def _check_size(data: SourceData, size: int, resize: bool) -> SourceData:
    """Array sources (cifar, synthetic) are 32x32: resize them only when asked."""
    for part in (data.train, data.test):
        if part is None or part.images.shape[1:3] == (size, size):
            continue
        h, w = part.images.shape[1:3]
        if not resize:
            raise DataError(f"{data.source} images are {w}x{h}, expected {size}x{size}; pass --resize")
        part.images = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC))
                                for a in part.images])
    return data


def _listing(names: list[str]) -> str:
    return ", ".join(names[:_SHOW]) + (f" (and {len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _first_duplicate(keys: list[str]) -> tuple[int, int] | None:
    """Positions (first, second) of the first key seen twice, or None."""
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            return seen[k], i
        seen[k] = i
    return None


def _check_classes(classes: list[str], labels: np.ndarray, where: str) -> None:
    if labels.size == 0:
        raise DataError(f"no labeled training images in {where}")
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"empty class in {where}: {_listing([repr(c) for c in empty])} has no training images; "
                        "add images, or relabel so class labels are contiguous")


def _require_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise DataError(f"data directory not found: {path}; check the path in the source string")
    return path


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _strip_ext(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTS else name


def _image_files(d: str) -> dict[str, str]:
    """Map id (file name without extension) -> path for the images directly in `d`."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(d), key=_natural_key):
        path = os.path.join(d, name)
        if name.startswith(".") or not os.path.isfile(path) or os.path.splitext(name)[1].lower() not in IMAGE_EXTS:
            continue
        stem = _strip_ext(name)
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
def _kaggle(root: str, size: int, resize: bool) -> SourceData:
    _require_dir(root)
    train_dir, csv_path = os.path.join(root, "train"), os.path.join(root, "train.csv")
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path} not found; a kaggle:DIR source needs DIR/train.csv with columns id,label")
    files = _image_files(_require_dir(train_dir))
    rows = _read_csv(csv_path, ("id", "label"))
    ids = [row["id"] for _, row in rows]
    keys = [_strip_ext(i) for i in ids]
    if dup := _first_duplicate(keys):
        a, b = (rows[j][0] for j in dup)
        raise DataError(f"duplicate id {ids[dup[1]]!r} in {csv_path} (lines {a} and {b}); keep one row")
    for (line, _), key in zip(rows, keys, strict=True):
        if key not in files:
            raise DataError(f"{csv_path} line {line}: id {key!r} has no image in {train_dir}; add it or drop the row")
    key_set = set(keys)
    if unlabeled := [p for k, p in files.items() if k not in key_set]:
        raise DataError(f"{len(unlabeled)} unlabeled image(s) in {train_dir} have no row in {csv_path}: "
                        f"{_listing(unlabeled)}; add rows for them or delete the files")
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
    _check_classes(classes, labels, csv_path)
    paths = [files[k] for k in keys]
    train = SplitArrays(_decode_all(paths, paths, size, resize), labels, ids)
    test, test_ids = _kaggle_test(root, size, resize)
    return SourceData(classes, train, test, test_ids, label_names_are_ints, f"kaggle:{root}")


def _kaggle_test(root: str, size: int, resize: bool) -> tuple[SplitArrays | None, list[str] | None]:
    test_dir, sub_path = os.path.join(root, "test"), os.path.join(root, "sample_submission.csv")
    has_dir, has_sub = os.path.isdir(test_dir), os.path.isfile(sub_path)
    if not has_dir and not has_sub:
        return None, None
    if not has_dir:
        raise DataError(f"{sub_path} exists but {test_dir} does not; add the test images or remove the csv")
    files = _image_files(test_dir)
    ids, test_ids = list(files), None  # without a sample_submission: natural file-name order
    if has_sub:
        ids = test_ids = [row["id"] for _, row in _read_csv(sub_path, ("id",))]
        keys = [_strip_ext(i) for i in ids]
        if dup := _first_duplicate(keys):
            raise DataError(f"duplicate id {ids[dup[1]]!r} in {sub_path} (lines {dup[0] + 2} and {dup[1] + 2})")
        no_file = [i for i, k in zip(ids, keys, strict=True) if k not in files]
        key_set = set(keys)
        extra = [p for k, p in files.items() if k not in key_set]
        if no_file or extra:
            raise DataError(f"test ids do not match {sub_path}: {len(no_file)} id(s) have no image in {test_dir} "
                            f"[{_listing(no_file)}]; {len(extra)} image(s) are not in the csv [{_listing(extra)}]; "
                            "the csv must list every test image once, by file name without extension")
    paths = [files[_strip_ext(i)] for i in ids]
    images = _decode_all(paths, paths, size, resize)
    return SplitArrays(images, np.full(len(ids), -1, dtype=np.int64), ids), test_ids


# ---------------------------------------------------------------- folder:DIR
def _folder(root: str, size: int, resize: bool) -> SourceData:
    """ImageFolder layout: DIR/<class>/<image> or DIR/train/<class>/<image>; a flat DIR/test/ is the unlabeled
    test split. Train ids are <class>/<file stem>, because file names often repeat across classes."""
    _require_dir(root)
    train_root = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    classes = sorted((d for d in os.listdir(train_root) if os.path.isdir(os.path.join(train_root, d))
                      and d != "test" and not d.startswith(".")), key=_natural_key)
    if not classes:
        raise DataError(f"no class sub-folders in {train_root}; put each class's images in DIR/<class>/")
    if stray := list(_image_files(train_root).values()):
        raise DataError(f"unlabeled image(s) directly in {train_root}: {_listing(stray)}; put them in class folders")
    found = [(f"{c}/{k}", path, label) for label, c in enumerate(classes)
             for k, path in _image_files(os.path.join(train_root, c)).items()]
    labels = np.array([f[2] for f in found], dtype=np.int64)
    _check_classes(classes, labels, train_root)
    paths = [f[1] for f in found]
    train = SplitArrays(_decode_all(paths, paths, size, resize), labels, [f[0] for f in found])
    test = None
    if os.path.isdir(test_root := os.path.join(root, "test")):
        files = _image_files(test_root)
        paths = list(files.values())
        test = SplitArrays(_decode_all(paths, paths, size, resize), np.full(len(paths), -1, np.int64), list(files))
    return SourceData(classes, train, test, None, False, f"folder:{root}")


# ---------------------------------------------------------------- cifar10 / cifar100
def _cifar(kind: str, from_dir: str | None) -> SourceData:
    import torchvision  # here, not at the top: ~1 s to import, and only these sources need it

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[kind]
    with tempfile.TemporaryDirectory(prefix=f"runner-{kind}-") as tmp:
        root = tmp if from_dir is None else os.path.abspath(from_dir)
        if from_dir is not None and os.path.basename(root.rstrip("/")) in ("cifar-10-batches-py", "cifar-100-python"):
            root = os.path.dirname(root.rstrip("/"))  # accept the batches folder itself, not only its parent
        try:
            parts = [cls(root, train=t, download=from_dir is None) for t in (True, False)]
        except (RuntimeError, OSError) as e:
            how = f"--from {from_dir} must hold the extracted batches" if from_dir else "no network? pass --from DIR"
            raise DataError(f"cannot read {kind} ({e}); {how}") from e
    train, test = (
        SplitArrays(np.asarray(p.data, dtype=np.uint8), np.asarray(p.targets, dtype=np.int64),
                    [f"{name}_{i:05d}" for i in range(len(p.targets))])
        for p, name in zip(parts, ("train", "test"), strict=True)
    )
    return SourceData(list(parts[0].classes), train, test, None, False, kind)


# ---------------------------------------------------------------- parquet:FILE
def _parquet(path: str, size: int, resize: bool) -> SourceData:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise DataError(f"parquet file not found: {path}")
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path} is not a readable Parquet file: {e}") from e
    names = pf.schema_arrow.names
    missing = [c for c in ("image", "label", "split") if c not in names]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; needs image (encoded bytes), label (int), split")
    id_col = next((c for c in ("id", "source_path") if c in names), None)
    cols = ["label", "split"] + [c for c in ("label_name", id_col) if c and c in names]
    t = pf.read(columns=cols).to_pydict()
    n, split = len(t["label"]), t["split"]
    bad_split = [i for i, s in enumerate(split) if s not in ("train", "test")]
    if bad_split:
        raise DataError(f"{path} row {bad_split[0]}: split {split[bad_split[0]]!r} must be 'train' or 'test'")
    is_train = np.array([s == "train" for s in split], dtype=bool)
    if id_col == "id":
        ids = [str(v) for v in t["id"]]
    elif id_col == "source_path":
        ids = [_strip_ext(str(v)) for v in t["source_path"]]
    else:  # train_00000, test_00000: numbered within each split
        k = np.where(is_train, np.cumsum(is_train), np.cumsum(~is_train)) - 1
        ids = [f"{s}_{j:05d}" for s, j in zip(split, k.tolist(), strict=True)]
    if dup := _first_duplicate(ids):
        raise DataError(f"duplicate id {ids[dup[1]]!r} in {path} (rows {dup[0]} and {dup[1]}); ids must be unique")
    labels = np.array([-1 if v is None else v for v in t["label"]], dtype=np.int64)
    for i in np.flatnonzero((labels < 0) & is_train):
        raise DataError(f"{path} row {i} (id {ids[i]!r}): unlabeled train image; give it a label >= 0")
    classes, label_names_are_ints = _parquet_classes(path, labels, t.get("label_name"), ids)
    _check_classes(classes, labels[is_train], path)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    start = 0
    for g in range(pf.num_row_groups):  # one row group at a time keeps the encoded bytes small in memory
        blobs = pf.read_row_group(g, columns=["image"]).column("image").to_pylist()
        names_g = [f"{path} row {start + j} (id {ids[start + j]!r})" for j in range(len(blobs))]
        images[start:start + len(blobs)] = _decode_all(blobs, names_g, size, resize)
        start += len(blobs)
    parts = [SplitArrays(images[m], labels[m], [ids[i] for i in np.flatnonzero(m)]) for m in (is_train, ~is_train)]
    return SourceData(classes, parts[0], parts[1] if len(parts[1].ids) else None, None,
                      label_names_are_ints, f"parquet:{path}")


def _parquet_classes(path: str, labels: np.ndarray, label_names: list | None, ids: list[str]) -> tuple:
    k = int(labels.max(initial=-1)) + 1
    if label_names is None:
        return [str(i) for i in range(k)], True
    first: dict[int, int] = {}  # label -> first row that names it
    for i, lab in enumerate(labels.tolist()):
        j = first.setdefault(lab, i)
        if lab >= 0 and label_names[i] != label_names[j]:
            raise DataError(f"{path} row {i} (id {ids[i]!r}): label {lab} is named {label_names[i]!r} but row {j} "
                            f"names it {label_names[j]!r}; fix label_name")
    classes = [label_names[first[i]] if i in first else f"<no images: label {i}>" for i in range(k)]
    if len(set(classes)) != len(classes):
        raise DataError(f"{path}: one label_name is used for two labels; each class needs its own name")
    return classes, False
