"""Reading a prepared data set (a local directory, any pyarrow filesystem URI, or `synthetic[:N]`):
its metadata, a whole split, or one trial's (train, val) share for one DDP rank.

Every reader takes the metadata it already has (`meta=`), so one invocation reads meta.json once;
`synthetic[:N]` metadata comes from its labels alone (no image is drawn). Every byte is read through
`runner.storage.filesystem`, the one place a path or URI becomes a pyarrow filesystem.

    meta, train, val = load_trial_data(cfg["data"], seed=cfg["train"]["seed"], rank=0, world=1)
    meta, test = load_test("data/cifar10-mini")
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from runner.data.format import SHUFFLE_SEED, Meta, build_meta, parse_meta, shuffled
from runner.data.sources import SourceData, read_source
from runner.data.split import DataError, Split, shard
from runner.storage import filesystem

_SYNTHETIC = re.compile(r"synthetic(:.*)?")


def is_synthetic(path: str) -> bool:
    return _SYNTHETIC.fullmatch(path) is not None


def read_meta(path: str) -> Meta:
    """meta.json of a prepared dir (local path or URI), or the meta of `synthetic[:N]` (from its labels)."""
    if is_synthetic(path):
        from runner.data.synthetic import CLASSES, IMAGE_SHAPE, synthetic_labels, synthetic_n

        n = synthetic_n(path)
        return build_meta(CLASSES, synthetic_labels(n), {}, image_shape=IMAGE_SHAPE, source=f"synthetic:{n}")
    fs, base = filesystem(path)
    try:
        with fs.open_input_stream(f"{base}/meta.json") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise DataError(
            f"{path} is not a prepared data set (no meta.json); run: runner data prepare SOURCE {path}"
        ) from e
    return parse_meta(text, f"{path}/meta.json")


def class_count(data_cfg: dict) -> tuple[int, str]:
    """(classes, note): from the data set's meta.json when readable; else the spec's `data.num_classes`
    (note " (spec)"); else 10 (note " (assumed)"). For `runner check`, which may run before prepare."""
    try:
        return read_meta(data_cfg["path"]).num_classes, ""
    except (DataError, OSError):
        if data_cfg["num_classes"]:
            return data_cfg["num_classes"], " (spec)"
        return 10, " (assumed)"


def load_trial_data(data_cfg: dict, seed: int, rank: int = 0, world: int = 1, *,
                    meta: Meta | None = None) -> tuple[Meta, Split, Split]:
    """(meta, train, val) of one trial for DDP rank `rank` of `world`: the stratified split of the train
    rows by (data.val_fraction, seed), then this rank's contiguous block of each part (disjoint across
    ranks; sizes differ by at most 1). A prepared set reads only the row groups holding those rows."""
    path, fraction = data_cfg["path"], data_cfg["val_fraction"]
    if is_synthetic(path):
        data = read_source(path)
        train = data.train
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(train))  # the rows prepare would write
        tr, va = shard(train.labels.numpy()[order], val_fraction=fraction, seed=seed, rank=rank, world=world)
        return meta or _synthetic_meta(data), train.take(order[tr]), train.take(order[va])
    meta = meta or read_meta(path)
    pf = _parquet_file(path, "train", meta)
    labels = pf.read(columns=["label"]).column("label").to_numpy()
    tr, va = shard(labels, val_fraction=fraction, seed=seed, rank=rank, world=world)
    where = f"{path}/train.parquet"
    return meta, _to_split(_take(pf, tr), meta.image_shape, where), _to_split(_take(pf, va), meta.image_shape, where)


def load_split(path: str, split: str, *, meta: Meta | None = None) -> Split:
    """A whole split ("train" or "test") of a prepared dir or `synthetic[:N]`; an empty split is an error."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if is_synthetic(path):
        data = read_source(path)
        return shuffled(data.train) if split == "train" else data.test
    meta = meta or read_meta(path)
    if meta.counts.get(split, {}).get("total") == 0:
        raise DataError(f"{path} has an empty {split} split (source {meta.source}); prepare it again from a "
                        f"source with {split} images")
    pf = _parquet_file(path, split, meta)
    part = _to_split(pf.read(columns=["id", "image", "label"]), meta.image_shape, f"{path}/{split}.parquet")
    if len(part) == 0:
        raise DataError(f"{path}/{split}.parquet holds no rows; prepare the data again")
    return part


def load_test(path: str) -> tuple[Meta, Split]:
    """(meta, test split) for `runner submit`: the metadata read once, the split never empty."""
    meta = read_meta(path)
    return meta, load_split(path, "test", meta=meta)


# ---------------------------------------------------------------- internals
def _synthetic_meta(data: SourceData) -> Meta:
    return build_meta(data.classes, {"train": data.train.labels.numpy(), "test": data.test.labels.numpy()}, {},
                      image_shape=tuple(data.train.images.shape[1:]), source=data.source)


def _parquet_file(path: str, split: str, meta: Meta) -> pq.ParquetFile:
    if split not in meta.splits:
        raise DataError(f"{path} has no {split} split (source {meta.source})")
    fs, base = filesystem(path)
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
