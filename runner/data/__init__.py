"""Data: sources read into a `Split` (sources.py, bundles.py, synthetic.py; label checks in classes.py),
the prepared on-disk format (format.py: Parquet + meta.json), reading it (loader.py, through
runner.storage's filesystems), checking it before a run (verify.py). numpy, pyarrow, PIL, torch; never
Ray or MLflow.

    runner.data.prepare("kaggle:DIR", "data/x")       # `runner data prepare`
    meta = runner.data.verify("data/x")                # pre-flight: footers and sha256, named errors
    meta, train, val = runner.data.load_trial_data(cfg["data"], seed=0, rank=0, world=1, meta=meta)
    meta, test = runner.data.load_test("data/x")       # `runner submit`
"""

from runner.data.format import Meta, prepare
from runner.data.loader import class_count, load_split, load_test, load_trial_data, read_meta
from runner.data.split import DataError, Split, channel_stats, stratified_split
from runner.data.verify import check_num_classes, verify

__all__ = ["DataError", "Meta", "Split", "channel_stats", "check_num_classes", "class_count", "load_split",
           "load_test", "load_trial_data", "prepare", "read_meta", "stratified_split", "verify"]
