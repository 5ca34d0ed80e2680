"""The prepared data set format: write it once, atomically; read a split or one worker's shard.

A prepared data set is a directory (local, or any pyarrow filesystem URI such as s3://bucket/x for reading):
  train.parquet   columns id (string), image (binary: raw uint8 HWC bytes), label (int16; int32 past 32767 classes)
  test.parquet    same columns, rows in submission order; label -1 where the source has no test labels
  meta.json       classes, image_shape [H, W, C], counts, source, sha256 per file, test_ids, label_names_are_ints
Train rows are written in a fixed shuffled order, so a worker's contiguous block of rows holds every class
and it reads only its own row groups (1024 rows each). `synthetic[:N]` is accepted wherever a path is and is
generated in memory (no files), with the same content `prepare` would write.

    runner data prepare kaggle:DIR OUT        # -> runner.data.prepare("kaggle:DIR", "OUT")
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from runner.data.sources import DataError, SourceData, SplitArrays, read_source
from runner.files import atomic_directory

FORMAT_VERSION = 1
ROW_GROUP_SIZE = 1024  # rows per Parquet row group: the unit a shard reader fetches (3 MiB at 32x32x3)
SHUFFLE_SEED = 0  # fixed: the train row order must not change between prepares of the same source
_SYNTHETIC = re.compile(r"synthetic(:.*)?")


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, H, W, C]
    labels: torch.Tensor  # int64 [N]; -1 = unlabeled
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


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
    size: int = 32,
) -> Meta:
    """Read `source` and write the prepared set to local dir `out`; nothing is left behind on error."""
    if "://" in out and not out.startswith("file://"):
        raise DataError(f"prepare writes local directories only, not {out}; prepare locally, then copy it")
    out = os.path.abspath(out.removeprefix("file://"))
    if os.path.lexists(out) and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    data = read_source(source, size=size, resize=resize, from_dir=from_dir)
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            return _write(data, tmp)
    except FileExistsError as err:  # someone else created it while we were reading the source
        raise DataError(f"{out} already exists; pass --overwrite to replace it") from err


def _write(data: SourceData, d: str) -> Meta:
    train = data.train
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(train.ids))
    parts = {"train": SplitArrays(train.images[order], train.labels[order], [train.ids[i] for i in order])}
    if data.test is not None:
        parts["test"] = data.test
    label_type = pa.int16() if len(data.classes) <= 32767 else pa.int32()
    sha = {}
    for name, part in parts.items():
        fname = f"{name}.parquet"
        _write_parquet(part, os.path.join(d, fname), label_type)
        sha[fname] = _sha256(os.path.join(d, fname))
    meta = _meta(data, parts, sha)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(asdict(meta), f, indent=1)
    if data.test is not None and len(data.test.ids) and (np.asarray(data.test.labels) >= 0).all():
        _write_solution(data.test, meta, os.path.join(d, "solution.csv"))
    return meta


def _write_solution(test: SplitArrays, meta: Meta, path: str) -> None:
    """Where the source knows the test labels (synthetic, CIFAR), `runner score` can check a submission."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        for image_id, label in zip(test.ids, np.asarray(test.labels).tolist(), strict=True):
            writer.writerow([image_id, label if meta.label_names_are_ints else meta.classes[label]])


def _write_parquet(part: SplitArrays, path: str, label_type: pa.DataType) -> None:
    n, per = len(part.ids), int(np.prod(part.images.shape[1:]))
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", label_type)])
    with pq.ParquetWriter(path, schema) as w:
        for lo in range(0, max(n, 1), ROW_GROUP_SIZE):  # one table per row group: offsets stay small
            hi = min(lo + ROW_GROUP_SIZE, n)
            raw = np.ascontiguousarray(part.images[lo:hi]).tobytes()
            offsets = np.arange(hi - lo + 1, dtype=np.int32) * per
            image = pa.Array.from_buffers(pa.binary(), hi - lo, [None, pa.py_buffer(offsets), pa.py_buffer(raw)])
            table = pa.table(
                [pa.array(part.ids[lo:hi], pa.string()), image, pa.array(part.labels[lo:hi], label_type)],
                schema=schema,
            )
            w.write_table(table, row_group_size=ROW_GROUP_SIZE)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta(data: SourceData, parts: dict[str, SplitArrays], sha: dict[str, str]) -> Meta:
    counts = {}
    for name, part in parts.items():
        labeled = part.labels[part.labels >= 0]
        per_class = np.bincount(labeled, minlength=len(data.classes))
        counts[name] = {
            "total": len(part.ids),
            "labeled": int(labeled.size),
            "per_class": {c: int(k) for c, k in zip(data.classes, per_class, strict=True)} if labeled.size else {},
        }
    return Meta(
        classes=list(data.classes), image_shape=tuple(int(s) for s in data.train.images.shape[1:]), counts=counts,
        source=data.source, sha256=sha, test_ids=data.test_ids, label_names_are_ints=data.label_names_are_ints,
        splits=list(parts),
    )


# ---------------------------------------------------------------- reading
def _synthetic(path: str) -> SourceData | None:
    if not _SYNTHETIC.fullmatch(path):
        return None
    data = read_source(path)
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(data.train.ids))  # same rows as prepare writes
    t = data.train
    data.train = SplitArrays(t.images[order], t.labels[order], [t.ids[i] for i in order])
    return data


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def read_meta(path: str) -> Meta:
    """meta.json of a prepared dir (local path or URI), or the meta of `synthetic[:N]`."""
    data = _synthetic(path)
    if data is not None:
        parts = {"train": data.train, "test": data.test}
        return _meta(data, {k: v for k, v in parts.items() if v is not None}, {})
    fs, base = _resolve(path)
    try:
        with fs.open_input_stream(f"{base}/meta.json") as f:
            raw = json.loads(f.read())
    except FileNotFoundError as e:
        raise DataError(
            f"{path} is not a prepared data set (no meta.json); run: runner data prepare SOURCE {path}"
        ) from e
    if raw.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}/meta.json has format_version {raw.get('format_version')}, this runner reads "
                        f"{FORMAT_VERSION}; prepare the data again")
    raw["image_shape"] = tuple(raw["image_shape"])
    return Meta(**raw)


def class_count(data_cfg: dict) -> tuple[int, str]:
    """(classes, note): from the data set's meta.json when readable; else the spec's `data.num_classes`
    (note " (spec)"); else 10 (note " (assumed)"). For `runner check`, which may run before prepare."""
    try:
        return read_meta(data_cfg["path"]).num_classes, ""
    except (DataError, OSError):
        if data_cfg["num_classes"]:
            return data_cfg["num_classes"], " (spec)"
        return 10, " (assumed)"


def _parquet_file(path: str, split: str, meta: Meta) -> pq.ParquetFile:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if split not in meta.splits:
        raise DataError(f"{path} has no {split} split (source {meta.source})")
    fs, base = _resolve(path)
    return pq.ParquetFile(fs.open_input_file(f"{base}/{split}.parquet"))


def _to_split(table: pa.Table, shape: tuple[int, int, int], where: str) -> Split:
    per = int(np.prod(shape))
    chunks = []
    for arr in table.column("image").chunks:  # zero-copy view of each chunk's value buffer, then one copy
        width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset:arr.offset + len(arr) + 1]
        if arr.null_count or np.any(np.diff(offsets) != per):
            raise DataError(f"{where}: an image is not {per} bytes ({shape}); prepare the data again")
        chunks.append(np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]])
    flat = np.concatenate(chunks) if chunks else np.empty(0, np.uint8)
    images = torch.from_numpy(flat.reshape(-1, *shape).copy())
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return Split(images, labels, table.column("id").to_pylist())


def _from_arrays(part: SplitArrays, idx: np.ndarray | None = None) -> Split:
    if idx is None:
        idx = np.arange(len(part.ids))
    return Split(torch.from_numpy(part.images[idx].copy()), torch.from_numpy(part.labels[idx].copy()),
                 [part.ids[i] for i in idx])


def load_split(path: str, split: str) -> Split:
    """A whole split ("train" or "test") of a prepared dir or `synthetic[:N]`."""
    data = _synthetic(path)
    if data is not None:
        part = {"train": data.train, "test": data.test}.get(split)
        if part is None:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        return _from_arrays(part)
    meta = read_meta(path)
    pf = _parquet_file(path, split, meta)
    return _to_split(pf.read(columns=["id", "image", "label"]), meta.image_shape, f"{path}/{split}.parquet")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), both sorted: `fraction` of each class to val, rounded so the total is
    round(N * fraction) (largest remainders). Same labels and seed -> same split."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    exact = counts * fraction
    n_val = np.floor(exact).astype(np.int64)
    short = int(round(labels.size * fraction)) - int(n_val.sum())
    # Stable sort on the remainders: ties go to the lower class, so the result depends on nothing else.
    n_val[np.argsort(-(exact - n_val), kind="stable")[:max(short, 0)]] += 1
    rng = np.random.default_rng(seed)
    val = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(n_val)]
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    train_mask = np.ones(labels.size, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx.astype(np.int64)


def _take(pf: pq.ParquetFile, idx: np.ndarray) -> pa.Table:
    """Rows `idx` (sorted) reading only the row groups that hold them."""
    sizes = np.array([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    groups = np.unique(np.searchsorted(starts, idx, side="right") - 1)
    table = pf.read_row_groups(groups.tolist(), columns=["id", "image", "label"])
    # Position of each wanted row inside the concatenation of the groups read.
    base = np.concatenate([[0], np.cumsum(sizes[groups])])[:-1]
    group_of = np.searchsorted(starts, idx, side="right") - 1
    local = idx - starts[group_of] + base[np.searchsorted(groups, group_of)]
    return table.take(pa.array(local))


def load_train_shard(path: str, *, rank: int, world: int, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """This rank's (train, val) share: the stratified split by (val_fraction, seed) over all train labels,
    then contiguous 1/world blocks of each part (disjoint across ranks; sizes differ by at most 1)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world={world}), got {rank}")
    data = _synthetic(path)
    if data is not None:
        tr, va = stratified_split(data.train.labels, val_fraction, seed)
        return _from_arrays(data.train, np.array_split(tr, world)[rank]), _from_arrays(
            data.train, np.array_split(va, world)[rank])
    meta = read_meta(path)
    pf = _parquet_file(path, "train", meta)
    labels = pf.read(columns=["label"]).column("label").to_numpy()
    tr, va = stratified_split(labels, val_fraction, seed)
    where = f"{path}/train.parquet"
    train, val = (_to_split(_take(pf, np.array_split(part, world)[rank]), meta.image_shape, where) for part in (tr, va))
    return train, val


def channel_stats(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of `split.images`, in [0, 1] units.

    Exact, from a 256-bin histogram per channel: 0.4 s for CIFAR-10's 50k train images, where float64
    sums of the same pixels took 6 s on 2 cores."""
    if len(split) == 0:
        raise ValueError("channel_stats of an empty split")
    images = split.images
    hist = torch.stack([torch.bincount(images[..., c].reshape(-1), minlength=256)
                        for c in range(images.shape[-1])]).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64, device=hist.device) / 255.0
    n = hist.sum(1)
    mean = (hist * values).sum(1) / n
    std = ((hist * values**2).sum(1) / n - mean**2).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
