"""Sources that arrive as one bundle: torchvision's CIFAR batches (`cifar10`, `cifar100`) and one Parquet
file of encoded images (`parquet:FILE`). Read by `runner.data.sources.read_source`; never writes.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from runner.data.classes import check_classes
from runner.data.sources import SourceData, decode_all, first_duplicate, strip_ext
from runner.data.split import DataError, Split


# ---------------------------------------------------------------- cifar10 / cifar100
def cifar(kind: str, from_dir: str | None) -> SourceData:
    import torchvision  # here, not at the top: slow to import, and only these sources need it

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
        Split.of(np.asarray(p.data, dtype=np.uint8), np.asarray(p.targets, dtype=np.int64),
                 [f"{name}_{i:05d}" for i in range(len(p.targets))])
        for p, name in zip(parts, ("train", "test"), strict=True)
    )
    return SourceData(list(parts[0].classes), train, test, None, False, kind)


# ---------------------------------------------------------------- parquet:FILE
def parquet(path: str, size: int, resize: bool, allow_rare: bool) -> SourceData:
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
        ids = [strip_ext(str(v)) for v in t["source_path"]]
    else:  # train_00000, test_00000: numbered within each split
        k = np.where(is_train, np.cumsum(is_train), np.cumsum(~is_train)) - 1
        ids = [f"{s}_{j:05d}" for s, j in zip(split, k.tolist(), strict=True)]
    if dup := first_duplicate(ids):
        raise DataError(f"duplicate id {ids[dup[1]]!r} in {path} (rows {dup[0]} and {dup[1]}); ids must be unique")
    labels = np.array([-1 if v is None else v for v in t["label"]], dtype=np.int64)
    for i in np.flatnonzero((labels < 0) & is_train):
        raise DataError(f"{path} row {i} (id {ids[i]!r}): unlabeled train image; give it a label >= 0")
    classes, label_names_are_ints = _parquet_classes(path, labels, t.get("label_name"), ids)
    train_rows = np.flatnonzero(is_train)
    check_classes(classes, labels[is_train], path, lambda i: f"row {train_rows[i]} (id {ids[train_rows[i]]!r})",
                  allow_rare=allow_rare)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    start = 0
    for g in range(pf.num_row_groups):  # one row group at a time keeps the encoded bytes small in memory
        blobs = pf.read_row_group(g, columns=["image"]).column("image").to_pylist()
        names_g = [f"{path} row {start + j} (id {ids[start + j]!r})" for j in range(len(blobs))]
        images[start:start + len(blobs)] = decode_all(blobs, names_g, size, resize)
        start += len(blobs)
    parts = [Split.of(images[m], labels[m], [ids[i] for i in np.flatnonzero(m)]) for m in (is_train, ~is_train)]
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
