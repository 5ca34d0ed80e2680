"""Data: sources read into arrays, the prepared on-disk format (Parquet + meta.json), and loading a
split or one worker's shard. numpy, pyarrow, PIL, torch; never Ray or MLflow.

    runner.data.prepare("kaggle:DIR", "data/x")       # `runner data prepare`
    meta = runner.data.read_meta("data/x")
    train, val = runner.data.load_train_shard("data/x", rank=0, world=1, val_fraction=0.1, seed=0)
"""

from runner.data.format import (
    Meta,
    Split,
    channel_stats,
    class_count,
    load_split,
    load_train_shard,
    prepare,
    read_meta,
    stratified_split,
)
from runner.data.sources import DataError

__all__ = ["DataError", "Meta", "Split", "channel_stats", "class_count", "load_split", "load_train_shard", "prepare",
           "read_meta", "stratified_split"]
