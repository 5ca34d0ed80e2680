"""The prepared data set format: write it once, atomically; parse its meta.json (runner/data/loader.py reads it).

A prepared data set is a directory (local, or any pyarrow filesystem URI such as s3://bucket/x):
  train.parquet   columns id (string), image (binary: raw uint8 HWC bytes), label (int16; int32 past 32767 classes)
  test.parquet    same columns, rows in submission order; label -1 where the source has no test labels
  meta.json       classes, image_shape [H, W, C], counts, source, sha256 per file, test_ids, label_names_are_ints
Train rows are written in a fixed shuffled order, so a worker's contiguous block of rows holds every class
and it reads only its own row groups (1024 rows each). `synthetic[:N]` is accepted wherever a path is and is
generated in memory (no files), with the same content `prepare` would write.
An empty split is never written: a source without test images has no test.parquet.

    runner data prepare kaggle:DIR OUT        # -> runner.data.prepare("kaggle:DIR", "OUT")
    runner data prepare cifar100 s3://BUCKET/cifar100    # written locally, then uploaded, meta.json last
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from runner import storage
from runner.data.sources import SourceData, read_source
from runner.data.split import DataError, Split
from runner.files import atomic_directory
from runner.masking import redact

FORMAT_VERSION = 1
ROW_GROUP_SIZE = 1024  # rows per Parquet row group: the unit a shard reader fetches (3 MiB at 32x32x3)
SHUFFLE_SEED = 0  # fixed: the train row order must not change between prepares of the same source


@dataclass
class Meta:
    classes: list[str]
    image_shape: tuple[int, int, int]  # H, W, C
    counts: dict  # {"train"|"test": {"total": n, "labeled": n, "per_class": {class: n}}}
    source: str
    sha256: dict[str, str]  # file name -> hex digest; {} for synthetic
    test_ids: list[str] | None  # sample_submission order when the source has one (test.parquet follows it)
    label_names_are_ints: bool  # submissions write int(class name) when True
    format_version: int = FORMAT_VERSION
    splits: list[str] = field(default_factory=lambda: ["train"])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def test_ids_order(self) -> list[str] | None:  # the name docs/architecture.md uses
        return self.test_ids


# ---------------------------------------------------------------- writing
def prepare(
    source: str, out: str, *, resize: bool = False, from_dir: str | None = None, overwrite: bool = False,
    size: int = 32, allow_rare_classes: bool = False,
) -> Meta:
    """Read `source` and write the prepared set to dir `out` (local, or a URI such as s3://...); nothing is
    left behind on error. A class far rarer than the others (a likely typo) is refused unless `allow_rare_classes`."""
    if storage.is_remote(out):
        return _prepare_remote(source, out, overwrite=overwrite, resize=resize, from_dir=from_dir, size=size,
                               allow_rare_classes=allow_rare_classes)
    out = os.path.abspath(out.removeprefix("file://"))
    if os.path.lexists(out) and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    data = read_source(source, size=size, resize=resize, from_dir=from_dir, allow_rare_classes=allow_rare_classes)
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            return _write(data, tmp)
    except FileExistsError as err:  # someone else created it while we were reading the source
        raise DataError(f"{out} already exists; pass --overwrite to replace it") from err


def _prepare_remote(source: str, out: str, *, overwrite: bool, **options: object) -> Meta:
    """The store is checked first (seconds, before the source is read); the set is written to a local temp
    folder, then uploaded with meta.json last, which readers need first: none sees a half-uploaded set."""
    storage.check(out, write=True)
    if storage.exists(f"{out}/meta.json") and not overwrite:
        raise DataError(f"{redact(out)} already exists; pass --overwrite to replace it")
    with tempfile.TemporaryDirectory(prefix="prepare-") as local:
        meta = prepare(source, os.path.join(local, "set"), **options)
        storage.upload_folder(os.path.join(local, "set"), out, last="meta.json")
    return meta


def _write(data: SourceData, d: str) -> Meta:
    parts = {"train": shuffled(data.train)}
    if data.test is not None:
        parts["test"] = data.test
    label_type = pa.int16() if len(data.classes) <= 32767 else pa.int32()
    sha = {}
    for name, part in parts.items():
        fname = f"{name}.parquet"
        _write_parquet(part, os.path.join(d, fname), label_type)
        with open(os.path.join(d, fname), "rb") as f:
            sha[fname] = sha256_of(f)
    meta = build_meta(data.classes, {name: part.labels.numpy() for name, part in parts.items()}, sha,
                      image_shape=tuple(data.train.images.shape[1:]), source=data.source, test_ids=data.test_ids,
                      label_names_are_ints=data.label_names_are_ints)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(asdict(meta), f, indent=1)
    if data.test is not None and data.test.labeled():
        _write_solution(data.test, meta, os.path.join(d, "solution.csv"))
    return meta


def shuffled(train: Split) -> Split:
    """The train rows in the fixed order every prepare (and the in-memory synthetic set) stores them."""
    return train.take(np.random.default_rng(SHUFFLE_SEED).permutation(len(train)))


def _write_solution(test: Split, meta: Meta, path: str) -> None:
    """Where the source knows the test labels (synthetic, CIFAR), `runner score` can check a submission."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        for image_id, label in zip(test.ids, test.labels.tolist(), strict=True):
            writer.writerow([image_id, label if meta.label_names_are_ints else meta.classes[label]])


def _write_parquet(part: Split, path: str, label_type: pa.DataType) -> None:
    n, per = len(part.ids), int(np.prod(part.images.shape[1:]))
    images, labels = part.images.numpy(), part.labels.numpy()
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", label_type)])
    with pq.ParquetWriter(path, schema) as w:
        for lo in range(0, max(n, 1), ROW_GROUP_SIZE):  # one table per row group: offsets stay small
            hi = min(lo + ROW_GROUP_SIZE, n)
            raw = np.ascontiguousarray(images[lo:hi]).tobytes()
            offsets = np.arange(hi - lo + 1, dtype=np.int32) * per
            image = pa.Array.from_buffers(pa.binary(), hi - lo, [None, pa.py_buffer(offsets), pa.py_buffer(raw)])
            table = pa.table(
                [pa.array(part.ids[lo:hi], pa.string()), image, pa.array(labels[lo:hi], label_type)],
                schema=schema,
            )
            w.write_table(table, row_group_size=ROW_GROUP_SIZE)


def sha256_of(f: BinaryIO) -> str:
    """Hex sha256 of a binary stream (a local file or a pyarrow NativeFile), read 8 MiB at a time."""
    h = hashlib.sha256()
    while block := f.read(8 << 20):
        h.update(block)
    return h.hexdigest()


def build_meta(classes: list[str], labels: dict[str, np.ndarray], sha: dict[str, str], *,
               image_shape: tuple[int, ...], source: str, test_ids: list[str] | None = None,
               label_names_are_ints: bool = False) -> Meta:
    """A data set's meta.json: counts from each split's `labels` ({split: class indices, -1 unlabeled}),
    so no image is needed (the synthetic set's metadata is built without drawing one)."""
    counts = {}
    for name, part in labels.items():
        labeled = part[part >= 0]
        per_class = np.bincount(labeled, minlength=len(classes))
        counts[name] = {
            "total": int(part.size),
            "labeled": int(labeled.size),
            "per_class": {c: int(k) for c, k in zip(classes, per_class, strict=True)} if labeled.size else {},
        }
    return Meta(
        classes=list(classes), image_shape=tuple(int(s) for s in image_shape), counts=counts, source=source,
        sha256=sha, test_ids=test_ids, label_names_are_ints=label_names_are_ints, splits=list(labels),
    )


def parse_meta(text: bytes | str, where: str) -> Meta:
    """A meta.json's content -> Meta; anything else (not JSON, another format version, a missing or
    mistyped field) is a DataError naming `where`."""
    redo = "prepare the data again (runner data prepare SOURCE DIR --overwrite)"
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{where} is not valid JSON ({err}); the file is corrupt: {redo}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{where} holds a {type(raw).__name__}, not a JSON object; {redo}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{where} has format_version {raw.get('format_version')}, this runner reads "
                        f"{FORMAT_VERSION}; {redo}")
    known = {f.name for f in fields(Meta)}
    if unknown := sorted(set(raw) - known):
        raise DataError(f"{where}: unknown field(s) {unknown}; {redo}")
    try:
        meta = Meta(**{**raw, "image_shape": tuple(raw.get("image_shape") or ())})
    except TypeError as err:  # a required field is missing
        raise DataError(f"{where}: {err}; {redo}") from err
    if bad := _bad_field(meta):
        raise DataError(f"{where}: field {bad}; {redo}")
    return meta


def _bad_field(meta: Meta) -> str | None:
    """The first field whose value cannot be right, described; None when all are plausible."""
    if not (isinstance(meta.classes, list) and meta.classes and all(isinstance(c, str) for c in meta.classes)):
        return "classes must be a non-empty list of class names"
    if len(meta.image_shape) != 3 or not all(isinstance(s, int) and s > 0 for s in meta.image_shape):
        return f"image_shape must be [H, W, C], got {list(meta.image_shape)}"
    if not (isinstance(meta.splits, list) and "train" in meta.splits and set(meta.splits) <= {"train", "test"}):
        return f"splits must list 'train' (and optionally 'test'), got {meta.splits!r}"
    if not (isinstance(meta.sha256, dict) and all(isinstance(v, str) for v in meta.sha256.values())):
        return "sha256 must map file names to hex digests"
    if not isinstance(meta.counts, dict) or any(not isinstance(meta.counts.get(s), dict) for s in meta.splits):
        return "counts must hold each split's totals"
    if meta.test_ids is not None and not isinstance(meta.test_ids, list):
        return "test_ids must be a list of ids or null"
    return None


