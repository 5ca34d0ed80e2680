"""`checkpoint.keep: N` keeps the N best checkpoints by val accuracy *plus the latest* (Ray, Tune for a
1-worker trial and Train for a DDP one, never deletes the latest: a restart resumes from it), so storage
holds at most N + 1 per trial; the best one is what gets registered.

The trial is made to end worse than it began: an easy data set (a hue per class) learned to ~0.9 in
epoch 1, then a cyclic schedule whose peak lr destroys the weights for epochs 2 and 3. With keep 1 the
best (epoch 1) and the latest (epoch 3) remain and epoch 2 is deleted, on any CPU.
"""

from __future__ import annotations

import colorsys
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.data import prepare
from runner.submission import score

pytestmark = [pytest.mark.ray]

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}

SPEC = """
name: keep_one
base:
  data: {{path: {data}, val_fraction: 0.25}}
  model: {{name: wrn_std, depth: 10, width: 1}}
  optimizer: {{name: adam, lr: 0.003, weight_decay: 0.0}}
  schedule: {{name: cyclic, cycle_epochs: 4, max_lr: 10000.0}}   # epoch 2 at ~5000, epoch 3 at 10000
  augment: {{crop_padding: 2}}
  train: {{epochs: 3, batch_size: 32}}
  scaling: {{workers: 1, cpus_per_worker: 1, trial_cpus: 0.5}}
  checkpoint: {{keep: 1}}
runs:
  - name: only
"""


def hue_folder(root: Path, per_class: int = 80, test_per_class: int = 5) -> Path:
    """`folder:` source: root/{train,test}/<class>/*.png, class k a hue under random brightness and noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for k in range(10):
            (root / split / f"hue{k}").mkdir(parents=True)
            colour = np.array(colorsys.hsv_to_rgb(k / 10, 1.0, 1.0), np.float32)
            for i in range(count):
                pixels = colour * rng.uniform(0.6, 1.0) + rng.uniform(-0.15, 0.15, (32, 32, 3))
                Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
                    root / split / f"hue{k}" / f"{split}{i}.png")
    return root


@pytest.mark.timeout(300)
def test_keep_one_leaves_the_best_and_the_latest(short_dir: str, tmp_path: Path) -> None:
    """...and the best, not the latest, is what gets registered and predicts the `--submission`."""
    import torch
    from mlflow import MlflowClient

    env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{short_dir}/mlflow.db"}
    data = f"{short_dir}/hues"
    prepare(f"folder:{hue_folder(tmp_path / 'src')}", data)
    spec = Path(short_dir, "keep.yaml")
    spec.write_text(textwrap.dedent(SPEC.format(data=data)))
    done = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--storage", f"{short_dir}/results",
                           "--num-cpus", "2", "--submission", f"{short_dir}/sub.csv"], capture_output=True, text=True,
                          env=env, cwd=short_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment_id = client.get_experiment_by_name("keep_one").experiment_id
    child = next(r for r in client.search_runs([experiment_id]) if "mlflow.parentRunId" in r.data.tags)
    val_acc = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "val_acc")}
    assert val_acc[1] >= 0.6 and max(val_acc[2], val_acc[3]) <= 0.4, val_acc  # ~0.9 vs ~0.1 where written

    kept = sorted(torch.load(state, weights_only=True)["epoch"]
                  for state in Path(short_dir, "results").rglob("checkpoint_*/state.pt"))
    assert kept == [1, 3]  # the best by val accuracy, plus the latest; epoch 2 deleted
    assert score(f"{short_dir}/sub.csv", f"{data}/solution.csv") >= 0.6  # epoch 1's weights (~1.0), not epoch 3's
