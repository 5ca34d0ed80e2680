"""Pre-flight check of a prepared data set: read what training will read, before anything is spent.

`verify(path)` parses meta.json, opens each split's Parquet footer (columns, row count against
meta.json) and hashes each file against the sha256 meta.json recorded at prepare time, so a corrupt or
replaced train.parquet is refused in the driver instead of failing inside every Ray worker after the
grid has started. The full hash is affordable: a small fraction of one trial's start-up
(`python bench/verify.py`; figures in docs/benchmarks.md). `check_num_classes` compares the spec's
`data.num_classes` with the data set.

    meta = verify("data/cifar10-mini")           # DataError naming the file and the fix
    check_num_classes(meta, 10, "data/cifar10-mini")
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from runner.data.classes import listing
from runner.data.format import Meta, sha256_of
from runner.data.loader import is_synthetic, read_meta
from runner.data.split import DataError
from runner.storage import filesystem

COLUMNS = ("id", "image", "label")


def verify(path: str) -> Meta:
    """The data set's Meta, after checking every split file it lists; DataError on anything corrupt."""
    meta = read_meta(path)
    if is_synthetic(path):
        return meta  # generated in memory: nothing stored to check
    fs, base = filesystem(path)
    redo = f"prepare it again: runner data prepare {meta.source} {path} --overwrite"
    for split in meta.splits:
        name = f"{split}.parquet"
        where = f"{path}/{name}"
        expected = meta.sha256.get(name)
        if not expected:
            raise DataError(f"{path}/meta.json records no sha256 for {name}, so it cannot be checked; {redo}")
        try:
            with fs.open_input_file(f"{base}/{name}") as f:
                _check_footer(pq.ParquetFile(f), meta, split, where, redo)
                f.seek(0)
                digest = sha256_of(f)
        except FileNotFoundError as err:
            raise DataError(f"{where} is missing (meta.json lists a {split} split); {redo}") from err
        except (OSError, pa.ArrowException) as err:
            raise DataError(f"{where} is not a readable Parquet file ({err}); {redo}") from err
        if digest != expected:
            raise DataError(f"{where} does not match the sha256 meta.json recorded when it was prepared "
                            f"({digest[:12]}... != {expected[:12]}...): the file is corrupt or was replaced; {redo}")
    return meta


def check_num_classes(meta: Meta, num_classes: int | None, path: str) -> None:
    """The spec's `data.num_classes` (when given) must be the data set's class count."""
    if num_classes is not None and num_classes != meta.num_classes:
        raise DataError(f"the spec says {num_classes} classes but {path} has {meta.num_classes} "
                        f"({listing([repr(c) for c in meta.classes])}); fix data.num_classes (or leave it out: "
                        "the data set's meta.json is read) or data.path")


def _check_footer(pf: pq.ParquetFile, meta: Meta, split: str, where: str, redo: str) -> None:
    names = pf.schema_arrow.names
    if missing := [c for c in COLUMNS if c not in names]:
        raise DataError(f"{where} lacks column(s) {missing}; {redo}")
    rows, expected = pf.metadata.num_rows, meta.counts[split].get("total")
    if rows != expected:
        raise DataError(f"{where} holds {rows} rows but meta.json counts {expected}; {redo}")
