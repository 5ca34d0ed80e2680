"""Per-epoch checkpoint upload to S3: how long handing WRN-16-4's checkpoint (state.pt, 22 MB) to Ray with
s3:// storage blocks the training loop, against a local S3 endpoint (moto's server on 127.0.0.1, started here).

One run, each way a trial hands its checkpoint over, timed as the training loop sees it (the wall time of the
report call), with the same state.pt and `--epoch-s` of stand-in compute between reports (a sleep, so an upload
running in the background has something to overlap with):
  direct        pyarrow copies the checkpoint folder to s3:// (the bytes over HTTP: the floor of a blocking upload)
  tune          `ray.tune.report(checkpoint=...)` in a Tune function trainable (the 1-worker trial path)
  tune thread   the same report made from a helper thread, joined before the next one (Tune has no async mode)
  train none    `ray.train.report(metrics)` in a 1-worker TorchTrainer, no checkpoint (the report's own cost)
  train sync    the same with a checkpoint (the DDP trial path, Ray's default upload mode)
  train async   the same with `checkpoint_upload_mode=ASYNC`: the upload runs in a background thread
Every Ray side must leave one checkpoint per epoch in the bucket (checked). Ratio: train sync / train async.

Run: flock /tmp/ray-test.lock .venv/bin/python bench/checkpoint_upload.py [--epochs 5] [--epoch-s 2] [--tune-only]
`--quick` (a tiny model, the direct side only, no Ray) checks the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local throwaway cluster: no token file needed
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # throwaway keys below; never ask the EC2 metadata address

import pyarrow.fs as pafs  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from runner.core import checkpoint  # noqa: E402
from runner.tune import cluster as ray_cluster  # noqa: E402

BUCKET = "bench"


def start_s3(log: Path) -> subprocess.Popen:
    """moto's S3 server on a free loopback port; the standard AWS variables point every client at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    with open(log, "ab") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                                   str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(BUCKET)
    return server


def write_state(folder: Path, model: str, depth: int, width: int, classes: int) -> int:
    """state.pt as a trial writes it: weights, SGD state with its momentum buffers, epoch; returns its size."""
    net = models.build(model, classes, depth=depth, width=width)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # fills the momentum buffers: what a real checkpoint holds
    state = {"model": {k: v.detach() for k, v in net.state_dict().items()}, "optimizer": optimizer.state_dict(),
             "epoch": 1, "best_val_acc": 0.0}
    return checkpoint.save(state, folder).stat().st_size


def fresh_copy(state_file: str) -> str:
    """A new checkpoint folder per report, as a trial writes one; async uploads delete theirs when done."""
    folder = tempfile.mkdtemp(prefix="ckpt-")
    shutil.copy(state_file, folder)
    return folder


def time_direct(state_file: str, epochs: int) -> list[float]:
    fs, base = pafs.FileSystem.from_uri(f"s3://{BUCKET}/direct")
    seconds = []
    for epoch in range(epochs):
        folder = fresh_copy(state_file)
        started = time.perf_counter()
        pafs.copy_files(folder, f"{base}/checkpoint_{epoch}", destination_filesystem=fs)
        seconds.append(time.perf_counter() - started)
        shutil.rmtree(folder)
    return seconds


def tune_loop(config: dict) -> None:
    import threading

    import ray.tune

    seconds, previous = [], None
    for epoch in range(config["epochs"]):
        time.sleep(config["epoch_s"])
        folder = fresh_copy(config["state"])
        started = time.perf_counter()

        def send(epoch: int = epoch, folder: str = folder) -> None:
            ray.tune.report({"epoch": epoch}, checkpoint=ray.tune.Checkpoint.from_directory(folder))
            shutil.rmtree(folder)

        if config.get("background"):  # the previous report must be in before this one starts (order)
            if previous is not None:
                previous.join()
            previous = threading.Thread(target=send)
            previous.start()
        else:
            send()
        seconds.append(time.perf_counter() - started)
    if previous is not None:
        previous.join()
    Path(config["out"]).write_text(json.dumps(seconds))


def train_loop(config: dict) -> None:
    import ray.train

    mode = config["mode"]
    upload = ray.train.CheckpointUploadMode.ASYNC if mode == "async" else ray.train.CheckpointUploadMode.SYNC
    seconds = []
    for epoch in range(config["epochs"]):
        time.sleep(config["epoch_s"])
        folder = None if mode == "none" else fresh_copy(config["state"])
        saved = ray.train.Checkpoint.from_directory(folder) if folder else None
        started = time.perf_counter()
        ray.train.report({"epoch": epoch}, checkpoint=saved, checkpoint_upload_mode=upload)
        seconds.append(time.perf_counter() - started)
        if folder and mode == "sync":
            shutil.rmtree(folder)  # async: Ray deletes it once uploaded
    Path(config["out"]).write_text(json.dumps(seconds))


def checkpoints_in(prefix: str) -> int:
    fs, base = pafs.FileSystem.from_uri(f"s3://{BUCKET}/{prefix}")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sum(1 for i in infos if i.base_name == "state.pt")


def time_ray(state_file: str, epochs: int, epoch_s: float, scratch: Path, tune_only: bool
             ) -> dict[str, list[float]]:
    import ray
    import ray.train
    import ray.train.torch
    import ray.tune

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as runner/tune/trial.py sets it
    ray_cluster.start_local_ray(2, logging_level="warning")  # never a recorded Ray
    results = {}
    try:
        out = scratch / "tune.json"
        config = {"epochs": epochs, "epoch_s": epoch_s, "state": state_file, "out": str(out)}
        ray.tune.Tuner(ray.tune.with_resources(tune_loop, {"cpu": 1}), param_space=config,
                       run_config=ray.tune.RunConfig(name="tune", storage_path=f"s3://{BUCKET}", verbose=0)).fit()
        results["tune"] = json.loads(out.read_text())
        assert checkpoints_in("tune") == epochs, "the Tune side did not leave one checkpoint per epoch"
        ray.tune.Tuner(ray.tune.with_resources(tune_loop, {"cpu": 1}), param_space={**config, "background": True},
                       run_config=ray.tune.RunConfig(name="tune-bg", storage_path=f"s3://{BUCKET}", verbose=0)).fit()
        results["tune thread"] = json.loads(out.read_text())
        assert checkpoints_in("tune-bg") == epochs, "the Tune side did not leave one checkpoint per epoch"
        if tune_only:
            return results
        for mode in ("none", "sync", "async"):
            out = scratch / f"train-{mode}.json"
            ray.train.torch.TorchTrainer(
                train_loop, train_loop_config={**config, "mode": mode, "out": str(out)},
                scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                run_config=ray.train.RunConfig(name=f"train-{mode}", storage_path=f"s3://{BUCKET}")).fit()
            results[f"train {mode}"] = json.loads(out.read_text())
            if mode != "none":
                assert checkpoints_in(f"train-{mode}") == epochs, f"train {mode}: not one checkpoint per epoch"
    finally:
        ray.shutdown()
    return results


def summary(name: str, seconds: list[float], skip_first: bool) -> float:
    steady = seconds[1:] if skip_first and len(seconds) > 1 else seconds
    median = statistics.median(steady)
    print(f"{name:12s} median {median * 1000:7.1f} ms per epoch (all: {', '.join(f'{s:.3f}' for s in seconds)} s)")
    return median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--epoch-s", type=float, default=2.0, help="stand-in compute between two reports (sleep)")
    p.add_argument("--quick", action="store_true", help="tiny model, direct side only: checks the script runs")
    p.add_argument("--tune-only", action="store_true", help="the two Tune sides only (no TorchTrainer)")
    a = p.parse_args()
    model = ("wrn_std", 10, 1) if a.quick else ("wrn_std", 16, 4)
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as scratch:
        server = start_s3(Path(scratch) / "moto.log")
        try:
            size = write_state(Path(scratch) / "state", *model, classes=100)
            state_file = str(Path(scratch) / "state" / "state.pt")
            print(f"checkpoint: {model[0]}-{model[1]}-{model[2]} at 100 classes, state.pt {size / 2**20:.1f} MiB; "
                  f"endpoint {os.environ['AWS_ENDPOINT_URL']} (moto), {a.epochs} epochs, {a.epoch_s} s compute each")
            direct = summary("direct", time_direct(state_file, a.epochs), skip_first=False)
            print(f"direct upload: {size / 2**20 / direct:.0f} MiB/s")
            if a.quick:
                print(f"ratio direct upload / stand-in epoch: {direct / a.epoch_s:.3f}")
                return
            timed = time_ray(state_file, a.epochs, a.epoch_s, Path(scratch), a.tune_only)
            medians = {name: summary(name, seconds, skip_first=True) for name, seconds in timed.items()}
        finally:
            server.terminate()
            server.wait(10)
    if "train sync" not in medians:
        return
    print(f"ratio train sync / train async (report blocked per epoch): "
          f"{medians['train sync'] / medians['train async']:.1f}x; "
          f"sync blocks {medians['train sync'] / a.epoch_s:.1%} of a {a.epoch_s} s epoch, "
          f"async {medians['train async'] / a.epoch_s:.1%}; Tune's report {medians['tune'] / a.epoch_s:.1%}, "
          f"from a thread {medians['tune thread'] / a.epoch_s:.1%}")


if __name__ == "__main__":
    main()
