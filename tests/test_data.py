"""Tests for runner/data/: sources, the prepared format, its refusals, loading, verification, splits and shards.

Every data set here is written by the test itself into tmp_path (PIL + pyarrow); no network, no Ray.
Run: .venv/bin/pytest tests/test_data.py
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from runner import data
from runner.data import DataError, synthetic

CLASSES = ("cat", "dog", "frog")


def _pixels(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _write_csv(path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(rows)


def kaggle_dir(root, per_class: int = 6, n_test: int = 7, labels=CLASSES) -> dict:
    """A Kaggle-layout folder of PNGs (lossless, so pixels must round-trip exactly); returns what it wrote."""
    os.makedirs(root / "train")
    os.makedirs(root / "test")
    pixels, rows = {}, []
    for k in range(per_class * len(labels)):
        id_ = f"tr{k:03d}"
        pixels[id_] = _pixels(k)
        Image.fromarray(pixels[id_]).save(root / "train" / f"{id_}.png")
        rows.append((id_, labels[k % len(labels)]))
    _write_csv(root / "train.csv", rows)
    test_ids = [f"te{k:02d}" for k in np.random.default_rng(1).permutation(n_test)]  # not file-name order
    for k, id_ in enumerate(test_ids):
        pixels[id_] = _pixels(1000 + k)
        Image.fromarray(pixels[id_]).save(root / "test" / f"{id_}.png")
    _write_csv(root / "sample_submission.csv", [(i, labels[0]) for i in test_ids])
    return {"pixels": pixels, "rows": rows, "test_ids": test_ids}


def _nothing_left(parent) -> None:
    assert os.listdir(parent) == [], f"left behind: {os.listdir(parent)}"


def test_prepare_kaggle_round_trip(tmp_path):
    src = kaggle_dir(tmp_path / "src")
    out = tmp_path / "ds"
    meta = data.prepare(f"kaggle:{tmp_path / 'src'}", str(out))
    assert sorted(os.listdir(out)) == ["meta.json", "test.parquet", "train.parquet"]
    assert meta.classes == list(CLASSES) and meta.image_shape == (32, 32, 3)
    assert meta.counts["train"] == {"total": 18, "labeled": 18, "per_class": {c: 6 for c in CLASSES}}
    assert meta.counts["test"]["total"] == 7 and meta.counts["test"]["labeled"] == 0
    for name, digest in meta.sha256.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert data.read_meta(str(out)) == meta
    assert meta.test_ids == src["test_ids"] and not meta.label_names_are_ints

    train = data.load_split(str(out), "train")
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    label_of = dict(src["rows"])
    for img, lab, id_ in zip(train.images, train.labels, train.ids, strict=True):
        assert np.array_equal(img.numpy(), src["pixels"][id_])
        assert meta.classes[lab] == label_of[id_]
    test = data.load_split(f"file://{out}", "test")  # the URI path goes through pyarrow's filesystem
    assert test.ids == src["test_ids"] and (test.labels == -1).all()
    assert all(np.array_equal(i.numpy(), src["pixels"][k]) for i, k in zip(test.images, test.ids, strict=True))


def test_kaggle_int_labels_ids_with_extension_and_jpeg(tmp_path):
    root = tmp_path / "src"
    os.makedirs(root / "train")
    rows = []
    for k in range(9):
        Image.fromarray(_pixels(k)).save(root / "train" / f"{k}.jpg", quality=95)
        rows.append((f"{k}.jpg", str(k % 3)))
    _write_csv(root / "train.csv", rows)
    meta = data.prepare(f"kaggle:{root}", str(tmp_path / "ds"))
    assert meta.classes == ["0", "1", "2"] and meta.label_names_are_ints and meta.splits == ["train"]
    split = data.load_split(str(tmp_path / "ds"), "train")
    assert dict(zip(split.ids, split.labels.tolist(), strict=True)) == {f"{k}.jpg": k % 3 for k in range(9)}
    with pytest.raises(DataError, match="no test split"):
        data.load_split(str(tmp_path / "ds"), "test")


def _corrupt(root):
    (root / "train" / "tr004.png").write_bytes(b"not a png")
    return "tr004.png"


def _unlabeled(root):
    Image.fromarray(_pixels(99)).save(root / "train" / "stray.png")
    return "stray.png"


def _unknown_label(root):
    rows = list(csv.reader(open(root / "train.csv")))[1:]
    rows[3][1] = "7"  # an integer among class names
    _write_csv(root / "train.csv", rows)
    return "'7'"


def _duplicate_id(root):
    rows = list(csv.reader(open(root / "train.csv")))[1:]
    _write_csv(root / "train.csv", rows + [rows[2]])
    return "tr002"


def _wrong_size(root):
    Image.fromarray(_pixels(5, (40, 30))).save(root / "train" / "tr005.png")
    return "tr005.png is 40x30"


def _empty_class(root):
    rows = [(i, {"0": "0", "1": "1", "2": "3"}[str(k % 3)]) for k, (i, _) in
            enumerate(list(csv.reader(open(root / "train.csv")))[1:])]
    _write_csv(root / "train.csv", rows)  # labels 0, 1, 3: class 2 has no images
    return "'2'"


def _test_mismatch(root):
    os.remove(root / "test" / "te03.png")
    return "te03"


@pytest.mark.parametrize("break_it", [_corrupt, _unlabeled, _unknown_label, _duplicate_id, _wrong_size,
                                      _empty_class, _test_mismatch])
def test_kaggle_refusals_name_the_offender_and_leave_nothing(tmp_path, break_it):
    kaggle_dir(tmp_path / "src")
    offender = break_it(tmp_path / "src")
    outs = tmp_path / "outs"
    outs.mkdir()
    with pytest.raises(DataError, match=offender.replace(".", r"\.")) as e:
        data.prepare(f"kaggle:{tmp_path / 'src'}", str(outs / "ds"))
    if break_it is _wrong_size:
        assert "--resize" in str(e.value)
    _nothing_left(outs)


def test_missing_dir_and_bad_sources(tmp_path):
    for source, msg in [(f"kaggle:{tmp_path}/nope", "nope"), (f"folder:{tmp_path}/gone", "gone"),
                        (f"parquet:{tmp_path}/x.parquet", "x.parquet"), ("imagenet", "unknown data source"),
                        ("synthetic:abc", "synthetic:N")]:
        with pytest.raises(DataError, match=msg):
            data.prepare(source, str(tmp_path / "ds"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="not a prepared data set"):
        data.read_meta(str(tmp_path))


def test_wrong_size_with_resize_works(tmp_path):
    kaggle_dir(tmp_path / "src")
    _wrong_size(tmp_path / "src")
    data.prepare(f"kaggle:{tmp_path / 'src'}", str(tmp_path / "ds"), resize=True)
    assert data.load_split(str(tmp_path / "ds"), "train").images.shape == (18, 32, 32, 3)


def test_existing_out_overwrite_and_failed_write(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    data.prepare("synthetic:40", str(out))
    with pytest.raises(DataError, match="--overwrite"):
        data.prepare("synthetic:50", str(out))
    assert data.read_meta(str(out)).counts["train"]["total"] == 40

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(data.format, "_write_parquet", boom)
    with pytest.raises(OSError, match="disk full"):
        data.prepare("synthetic:50", str(out), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # old one intact, no temp dir
    with pytest.raises(OSError):
        data.prepare("synthetic:50", str(tmp_path / "new" / "deeper" / "ds"))
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # parents it made are gone too
    monkeypatch.undo()
    data.prepare("synthetic:50", str(out), overwrite=True)
    assert data.read_meta(str(out)).counts["train"]["total"] == 50 and sorted(os.listdir(tmp_path)) == ["ds"]


def test_synthetic_deterministic_balanced_and_its_meta_needs_no_images(tmp_path):
    a = synthetic.synthetic(5000)
    b = synthetic.synthetic(5000)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.images, b.test.images) and a.train.ids == b.train.ids
    assert np.bincount(a.train.labels).tolist() == [500] * 10 and len(a.test.ids) == 1000
    assert np.bincount(a.test.labels).tolist() == [100] * 10  # true test labels kept for scoring
    cheap = synthetic.synthetic_labels(5000)  # what the metadata needs, without drawing an image
    assert cheap["train"].tolist() == a.train.labels.tolist() and cheap["test"].tolist() == a.test.labels.tolist()
    # In-memory loaders give exactly what prepare writes.
    data.prepare("synthetic:60", str(tmp_path / "ds"))
    for split in ("train", "test"):
        mem, disk = data.load_split("synthetic:60", split), data.load_split(str(tmp_path / "ds"), split)
        assert torch.equal(mem.images, disk.images) and torch.equal(mem.labels, disk.labels) and mem.ids == disk.ids
    meta_mem, meta_disk = data.read_meta("synthetic:60"), data.read_meta(str(tmp_path / "ds"))
    assert meta_mem.classes == meta_disk.classes and meta_mem.counts == meta_disk.counts


def test_stratified_split():
    labels = np.array([0] * 100 + [1] * 50 + [2] * 30)
    tr, va = data.stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[va]).tolist() == [20, 10, 6]
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).tolist() == list(range(180))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    tr2, va2 = data.stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, data.stratified_split(labels, 0.2, seed=4)[1])
    assert data.stratified_split(labels, 0.0, seed=0)[1].size == 0
    with pytest.raises(ValueError, match="val_fraction"):
        data.stratified_split(labels, 1.0, seed=0)


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_load_trial_data_world2(tmp_path, monkeypatch, where):
    monkeypatch.setattr(data.format, "ROW_GROUP_SIZE", 16)  # many row groups, so a shard can skip some
    path = "synthetic:300"
    if where == "disk":
        data.prepare(path, str(tmp_path / "ds"))
        path = str(tmp_path / "ds")
        groups_read = []
        real = pq.ParquetFile.read_row_groups
        monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                            lambda self, groups, **kw: groups_read.append(groups) or real(self, groups, **kw))
    full = data.load_split(path, "train")
    tr, va = data.stratified_split(full.labels.numpy(), 0.1, seed=7)
    data_cfg = {"path": path, "val_fraction": 0.1, "num_classes": None}
    shards = [data.load_trial_data(data_cfg, 7, rank=r, world=2)[1:] for r in (0, 1)]
    for part, idx in ((0, tr), (1, va)):
        a, b = shards[0][part], shards[1][part]
        assert not set(a.ids) & set(b.ids) and abs(len(a) - len(b)) <= 1
        assert sorted(a.ids + b.ids) == sorted(full.ids[i] for i in idx)
        for s in (a, b):
            pos = [full.ids.index(i) for i in s.ids]
            assert torch.equal(s.images, full.images[pos]) and torch.equal(s.labels, full.labels[pos])
    if where == "disk":
        assert len(groups_read[0]) < 19  # rank 0's train rows: about half of the 19 row groups


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_parquet_source(tmp_path):
    names = ["bird", "cat"]  # label order given by the file, not alphabetical re-sorting
    rows = [(_jpeg(_pixels(k)), k % 2, names[k % 2], "train" if k < 10 else "test", f"{k}/img.jpg")
            for k in range(14)]
    columns = ["image", "label", "label_name", "split", "source_path"]
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    pq.write_table(table, tmp_path / "src.parquet")
    meta = data.prepare(f"parquet:{tmp_path / 'src.parquet'}", str(tmp_path / "ds"))
    assert meta.classes == names and not meta.label_names_are_ints
    assert meta.counts["train"]["per_class"] == {"bird": 5, "cat": 5}
    assert meta.counts["test"] == {"total": 4, "labeled": 4, "per_class": {"bird": 2, "cat": 2}}
    test = data.load_split(str(tmp_path / "ds"), "test")
    assert test.ids == ["10/img", "11/img", "12/img", "13/img"] and test.labels.tolist() == [0, 1, 0, 1]
    decoded = np.asarray(Image.open(io.BytesIO(rows[10][0])).convert("RGB"))  # JPEG is lossy: compare decoded
    assert np.array_equal(test.images[0].numpy(), decoded)
    bad = table.set_column(2, "label_name", pa.array(["bird", "cat"] * 6 + ["cat", "cat"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="row 12"):
        data.prepare(f"parquet:{tmp_path / 'bad.parquet'}", str(tmp_path / "ds2"))


def test_folder_source(tmp_path):
    for cls in ("b", "a"):
        os.makedirs(tmp_path / "src" / cls)
        for k in range(3):
            Image.fromarray(_pixels(k)).save(tmp_path / "src" / cls / f"{k}.png")
    os.makedirs(tmp_path / "src" / "test")
    Image.fromarray(_pixels(9)).save(tmp_path / "src" / "test" / "q.png")
    meta = data.prepare(f"folder:{tmp_path / 'src'}", str(tmp_path / "ds"))
    assert meta.classes == ["a", "b"] and meta.counts["test"]["total"] == 1
    assert sorted(data.load_split(str(tmp_path / "ds"), "train").ids) == [f"{c}/{k}" for c in "ab" for k in range(3)]
    os.makedirs(tmp_path / "src" / "c")  # an empty class folder
    with pytest.raises(DataError, match="'c'"):
        data.prepare(f"folder:{tmp_path / 'src'}", str(tmp_path / "ds2"))


def test_cifar_reads_through_torchvision(tmp_path, monkeypatch):
    class FakeCIFAR10:  # stands in for torchvision.datasets.CIFAR10 (no download, no 170 MB)
        def __init__(self, root, train, download):
            assert root == str(tmp_path) and not download
            n = 20 if train else 10
            self.data = np.zeros((n, 32, 32, 3), np.uint8)
            self.targets = [i % 10 for i in range(n)]
            self.classes = [f"c{i}" for i in range(10)]

    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(CIFAR10=FakeCIFAR10, CIFAR100=None))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    meta = data.prepare("cifar10", str(tmp_path / "ds"), from_dir=str(tmp_path / "cifar-10-batches-py"))
    assert meta.counts["test"]["labeled"] == 10 and meta.classes[3] == "c3"


def test_channel_stats():
    images = torch.zeros(4, 2, 2, 3, dtype=torch.uint8)
    images[..., 0] = 255
    images[:2, ..., 1] = 255
    mean, std = data.channel_stats(images)
    assert mean == pytest.approx([1.0, 0.5, 0.0]) and std == pytest.approx([0.0, 0.5, 0.0], abs=1e-5)


# ---------------------------------------------------------------- verify: pre-flight reads what will be trained on
def _flip_middle(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte inside the image data: the footer still parses
    path.write_bytes(bytes(raw))


def test_verify_passes_a_good_set_and_names_each_corruption(tmp_path):
    out = tmp_path / "ds"
    data.prepare("synthetic:200", str(out))
    assert data.verify(str(out)) == data.read_meta(str(out))
    assert data.verify("synthetic:200").num_classes == 10
    good = {name: (out / name).read_bytes() for name in ("train.parquet", "test.parquet", "meta.json")}

    def broken(name: str, change, *expected: str) -> None:
        change(out / name)
        with pytest.raises(DataError) as err:
            data.verify(str(out))
        for fragment in expected:
            assert fragment in str(err.value), str(err.value)
        (out / name).write_bytes(good[name])

    redo = "runner data prepare synthetic:200"  # the fix names the data set's own source
    broken("train.parquet", _flip_middle, f"{out}/train.parquet", "does not match the sha256", redo)
    broken("test.parquet", lambda p: p.write_bytes(p.read_bytes()[:-100]), f"{out}/test.parquet",
           "not a readable Parquet file", redo)
    broken("train.parquet", lambda p: p.unlink(), f"{out}/train.parquet is missing", redo)
    broken("meta.json", lambda p: p.write_text('{"classes": ["a", '), f"{out}/meta.json is not valid JSON",
           "prepare the data again")
    broken("meta.json", lambda p: p.write_text(p.read_text().replace('"classes"', '"klasses"')),
           f"{out}/meta.json", "klasses", "prepare the data again")
    broken("meta.json", lambda p: p.write_text(p.read_text().replace('"image_shape": [', '"image_shape": [0, ')),
           f"{out}/meta.json", "field image_shape", "prepare the data again")
    assert data.verify(str(out)) == data.read_meta(str(out))  # every file restored: passes again


def test_check_num_classes_names_both_counts():
    meta = data.read_meta("synthetic:50")
    data.check_num_classes(meta, None, "synthetic:50")
    data.check_num_classes(meta, 10, "synthetic:50")
    with pytest.raises(DataError, match=r"the spec says 100 classes but synthetic:50 has 10 .*data\.num_classes"):
        data.check_num_classes(meta, 100, "synthetic:50")


def test_metadata_is_read_once_and_synthetic_metadata_draws_no_image(tmp_path, monkeypatch):
    data.prepare("synthetic:120", str(tmp_path / "ds"))
    parsed = []
    real = data.loader.parse_meta
    monkeypatch.setattr(data.loader, "parse_meta", lambda *a: parsed.append(a[1]) or real(*a))
    cfg = {"path": str(tmp_path / "ds"), "val_fraction": 0.2, "num_classes": None}
    meta = data.verify(cfg["path"])
    data.load_trial_data(cfg, 0, meta=meta)
    data.load_split(cfg["path"], "test", meta=meta)
    assert len(parsed) == 1
    data.load_trial_data(cfg, 0)  # without one, the loader reads it itself: once
    assert len(parsed) == 2

    def no_drawing(*args):
        raise AssertionError("metadata must not draw images")

    monkeypatch.setattr(data.synthetic, "_draw", no_drawing)
    meta = data.read_meta("synthetic:50000")
    assert meta.counts["train"]["total"] == 50000 and meta.counts["test"]["per_class"]["warm_disc"] == 1000


# ---------------------------------------------------------------- a label that looks like a typo is not a class
def test_a_rare_class_is_refused_with_its_rows_and_nearest_names(tmp_path):
    kaggle_dir(tmp_path / "src", per_class=30, n_test=2, labels=("cat", "dog", "frog"))
    rows = list(csv.reader(open(tmp_path / "src" / "train.csv")))[1:]
    rows[4][1] = "dgo"  # line 6 of train.csv: a typo of "dog"
    _write_csv(tmp_path / "src" / "train.csv", rows)
    with pytest.raises(DataError) as err:
        data.prepare(f"kaggle:{tmp_path / 'src'}", str(tmp_path / "ds"))
    for fragment in ("rare class", "'dgo' has 1 image(s)", "line 6 (id 'tr004')", "nearest existing classes: 'dog'",
                     "median class has 29.5 images", "--allow-rare-classes"):
        assert fragment in str(err.value), str(err.value)
    assert not (tmp_path / "ds").exists()
    meta = data.prepare(f"kaggle:{tmp_path / 'src'}", str(tmp_path / "ds"), allow_rare_classes=True)
    assert meta.classes == ["cat", "dgo", "dog", "frog"] and meta.counts["train"]["per_class"]["dgo"] == 1


def test_a_rare_class_folder_is_refused_too(tmp_path):
    for cls, n in (("apple", 25), ("pear", 25), ("aple", 1)):
        os.makedirs(tmp_path / "src" / cls)
        for k in range(n):
            Image.fromarray(_pixels(k)).save(tmp_path / "src" / cls / f"{k}.png")
    with pytest.raises(DataError, match=r"'aple' has 1 image\(s\) \(.*src/train|'aple' has 1 image\(s\) \(.*aple/0"):
        data.prepare(f"folder:{tmp_path / 'src'}", str(tmp_path / "ds"))


# ---------------------------------------------------------------- folder:DIR test splits; no split is ever empty
def _folder_source(root, classes=("a", "b"), per_class=3, test: dict | None = None) -> None:
    for cls in classes:
        os.makedirs(root / "train" / cls)
        for k in range(per_class):
            Image.fromarray(_pixels(k + 10 * ord(cls[0]))).save(root / "train" / cls / f"{k}.png")
    for rel, seed in (test or {}).items():
        os.makedirs((root / "test" / rel).parent, exist_ok=True)
        Image.fromarray(_pixels(seed)).save(root / "test" / rel)


def test_folder_per_class_test_folders_are_a_labeled_test_split(tmp_path):
    _folder_source(tmp_path / "src", test={"a/q.png": 1, "b/q.png": 2, "b/r.png": 3})
    meta = data.prepare(f"folder:{tmp_path / 'src'}", str(tmp_path / "ds"))
    assert meta.counts["test"] == {"total": 3, "labeled": 3, "per_class": {"a": 1, "b": 2}}
    meta, test = data.load_test(str(tmp_path / "ds"))
    assert test.ids == ["a/q", "b/q", "b/r"] and test.labels.tolist() == [0, 1, 1]
    assert np.array_equal(test.images[2].numpy(), _pixels(3))
    assert (tmp_path / "ds" / "solution.csv").read_text() == "id,label\na/q,a\nb/q,b\nb/r,b\n"


@pytest.mark.parametrize("test, message", [
    ({}, "holds no images: an empty test split"),
    ({"q.png": 1, "a/r.png": 2}, "mixes images"),
    ({"c/q.png": 1}, "test class folder(s) 'c'"),
])
def test_folder_test_split_refusals(tmp_path, test, message):
    _folder_source(tmp_path / "src", test=test)
    os.makedirs(tmp_path / "src" / "test", exist_ok=True)
    with pytest.raises(DataError, match=re.escape(message)):
        data.prepare(f"folder:{tmp_path / 'src'}", str(tmp_path / "ds"))
    assert not (tmp_path / "ds").exists()


def test_kaggle_empty_test_folder_is_refused(tmp_path):
    kaggle_dir(tmp_path / "src", n_test=0)
    os.remove(tmp_path / "src" / "sample_submission.csv")
    with pytest.raises(DataError, match="test holds no images: an empty test split"):
        data.prepare(f"kaggle:{tmp_path / 'src'}", str(tmp_path / "ds"))


def test_an_empty_stored_split_is_refused_when_loaded(tmp_path):
    """A data set prepared before empty splits were refused: its 0-row test.parquet must not load."""
    out = tmp_path / "ds"
    data.prepare("synthetic:40", str(out))
    meta = json.loads((out / "meta.json").read_text())
    meta["counts"]["test"] = {"total": 0, "labeled": 0, "per_class": {}}
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="has an empty test split"):
        data.load_test(str(out))


def test_verify_and_load_read_through_s3(s3, tmp_path):
    """The same checks and loads on an S3-compatible server (moto on 127.0.0.1): one filesystem entry."""
    from runner import storage

    local = tmp_path / "ds"
    data.prepare("synthetic:200", str(local))
    uri = s3.uri("sets/ds")
    storage.upload_folder(str(local), uri, last="meta.json")
    meta = data.verify(uri)
    assert meta == data.read_meta(str(local))
    cfg = {"path": uri, "val_fraction": 0.2, "num_classes": None}
    _, train, val = data.load_trial_data(cfg, 3, rank=1, world=2, meta=meta)
    _, train_local, val_local = data.load_trial_data({**cfg, "path": str(local)}, 3, rank=1, world=2)
    assert train.ids == train_local.ids and torch.equal(val.images, val_local.images)
    _flip_middle(local / "train.parquet")
    storage.upload_folder(str(local), uri, last="meta.json")
    with pytest.raises(DataError, match=re.escape(f"{uri}/train.parquet does not match the sha256")):
        data.verify(uri)
