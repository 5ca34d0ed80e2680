"""Training throughput of the project's models and training core on one GPU (pure PyTorch: no Ray, no MLflow).

Sections (each timed with CUDA events after a warmup; on CPU with perf_counter):
  profile one training-core step cut into index+augment / forward+backward / optimizer / metric sums
          (wrn_std-10-1 at batch 64 and WRN-16-4 at batch 32, eager; each part ends in a device sync);
  models  training images/s (forward + backward + optimizer step of runner.train on one pre-made batch) for
          WRN-16-4 in both layouts (`wrn` = davda54's n+1 units per group, `wrn_std` = the standard one) and
          EfficientNet-B0 with both stems, bf16 autocast and channels_last, eager and torch.compile;
  loader  the training core's own epoch (`runner.core.train.train_epoch`: uint8 data on the device, a device
          permutation per epoch, batched augmentation, metrics summed on the device) against the same steps
          on one pre-made batch; the ratio is the loader's cost (goal <= 1.05);
  pack    two WRN-16-4 trainings in two processes sharing the GPU against one alone (aggregate images/s; goal
          >= 1.5x): what `scaling.gpus_per_worker: 0.5` buys when Ray packs two trials on one GPU.
  --time-to-acc  a standard WRN-16-4 run on CIFAR-10 (a prepared dir, e.g. from
          `runner data prepare parquet:../shared/data/cifar10-full.parquet data/cifar10`), evaluated on the
          test split after every epoch: wall time to 93% and 94% test accuracy.
Data: `--data DIR` reads a prepared data set through runner.data (Parquet); without it (or with
`--synthetic`) random uint8 images stand in (throughput does not depend on the pixels).

Run:  .venv/bin/python bench/gpu.py [--data DIR]                 # all sections; < 8 min on an H200
      .venv/bin/python bench/gpu.py --time-to-acc --data DIR     # CIFAR-10 to 94%
      .venv/bin/python bench/gpu.py --quick                      # tiny sizes on CPU, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from runner import data, spec  # noqa: E402
from runner.core import step, train  # noqa: E402  (the training core imports no Ray/MLflow)

NUM_CLASSES = 10
CLASSES = [str(c) for c in range(NUM_CLASSES)]
WRN = {"depth": 16, "width": 4}
MODELS = (("WRN-16-4 (wrn, davda54 layout)", "wrn", WRN), ("WRN-16-4 (wrn_std, standard)", "wrn_std", WRN),
          ("EfficientNet-B0 (stock stem)", "efficientnet", {"stem": "stock"}),
          ("EfficientNet-B0 (cifar stem)", "efficientnet", {"stem": "cifar"}))
# --quick: the same families at toy sizes, so every code path runs on a CPU in seconds.
TINY = {"wrn": {"depth": 10, "width": 1}, "wrn_std": {"depth": 10, "width": 1},
        "efficientnet": {"width": 0.25, "depth": 0.25}}


# ---------------------------------------------------------------- shared pieces

def config(a: argparse.Namespace, name: str, kwargs: dict, *, compile_: bool, batch: int, **extra: object) -> dict:
    flat = {"model.name": name, **{f"model.{k}": v for k, v in kwargs.items()},
            "train.batch_size": batch, "train.compile": compile_, "train.channels_last": True,
            "train.precision": "bf16" if a.device.type == "cuda" else "fp32",
            "optimizer.name": "sgd", "optimizer.lr": 0.1, "optimizer.nesterov": True,
            "augment.crop_padding": 4, "augment.hflip": True, "augment.cutout": 8,
            "budget.mode": "flag", **extra}
    return spec.trial_config(flat)


def make_run(a: argparse.Namespace, cfg: dict, images: torch.Tensor, labels: torch.Tensor) -> train.Run:
    """What `runner.core.train.fit` builds before its first epoch (its own `prepare`), on these images."""
    split = data.Split(images, labels, [str(i) for i in range(len(labels))])
    return train.prepare(cfg, split, None, CLASSES, device=a.device, compile_backend=a.compile_backend)


def seconds(device: torch.device, fn: Callable[[], object]) -> float:
    """Wall time of fn's device work: CUDA events around it on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def load_images(a: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    """uint8 [N, 32, 32, 3] and labels, from the prepared dir's train split or random."""
    if a.data and not a.synthetic:
        split = data.load_split(a.data, "train")
        return split.images, split.labels, f"{a.data} (train split, {len(split)} images)"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.n, 32, 32, 3), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, NUM_CLASSES, (a.n,), generator=g), f"random uint8 ({a.n} images)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release() -> None:
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- models: images/s on a pre-made batch

def bench_models(a: argparse.Namespace, images: torch.Tensor) -> None:
    print(f"\n[models] training images/s, batch {a.batch}, pre-made batch, "
          f"{'bf16 autocast' if a.device.type == 'cuda' else 'fp32'}, channels_last; "
          f"{a.warmup} warmup + {a.steps} timed steps")
    labels = torch.randint(0, NUM_CLASSES, (a.batch,), generator=torch.Generator().manual_seed(0))
    for label, name, kwargs in MODELS:
        if a.quick:
            kwargs = TINY[name] | ({"stem": kwargs["stem"]} if "stem" in kwargs else {})
            label = f"{label.split(' (')[0]} as {name} {kwargs}"
        rates = {}
        # --quick compiles one model only: the compile path runs, without four CPU compiles (~4 s each).
        compiles = (False,) if a.no_compile or (a.quick and name != "wrn_std") else (False, True)
        for compile_ in compiles:
            cfg = config(a, name, kwargs, compile_=compile_, batch=a.batch)
            run = make_run(a, cfg, images[:a.batch], labels)
            x = run.augment(run.train_x, torch.Generator(device=a.device).manual_seed(0))
            y = run.train_y
            warm = seconds(a.device, lambda run=run, x=x, y=y: [step.step(run, x, y) for _ in range(a.warmup)])
            took = seconds(a.device, lambda run=run, x=x, y=y: [step.step(run, x, y) for _ in range(a.steps)])
            rates[compile_] = a.batch * a.steps / took
            print(f"  {label:32s} {'compiled' if compile_ else 'eager':8s} {rates[compile_]:>10,.0f} img/s "
                  f"({took / a.steps * 1000:.2f} ms/step; warmup incl. compile {warm:.1f} s)", flush=True)
            del run, x, y
            release()
        if True in rates:
            print(f"  {label:32s} compile speed-up {rates[True] / rates[False]:.2f}x")


# ---------------------------------------------------------------- loader: the training core's epoch vs a pre-made batch

def bench_loader(a: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor) -> float:
    name, kwargs = "wrn_std", TINY["wrn_std"] if a.quick else WRN
    compile_ = not a.no_compile and not a.quick  # --quick: the models section already runs a compiled model
    cfg = config(a, name, kwargs, compile_=compile_, batch=a.batch)
    run = make_run(a, cfg, images, labels)
    steps, images_d, labels_d = run.steps_per_epoch, run.train_x, run.train_y
    x = run.augment(images_d[:a.batch], torch.Generator(device=a.device).manual_seed(0))
    y = labels_d[:a.batch]

    def real(epoch: int) -> None:  # exactly what fit runs for the training half of an epoch
        train.train_epoch(run, epoch)

    def premade() -> None:  # the same steps and metric sums; no indexing, no augmentation
        run.model.train()
        sums = torch.zeros(2, device=a.device, dtype=torch.float64)
        for _ in range(steps):
            loss, logits = step.step(run, x, y)
            sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
        sums.tolist()

    print(f"\n[loader] wrn_std {kwargs} {'compiled' if compile_ else 'eager'}, batch {a.batch}, "
          f"{steps} steps per epoch over {len(labels_d)} device-resident images")
    real(0)
    premade()  # warmup both (compile, cudnn autotune)
    real_s, premade_s = [], []
    for epoch in range(1, a.rounds + 1):  # interleaved, so drift hits both sides alike
        real_s.append(seconds(a.device, lambda epoch=epoch: real(epoch)))
        premade_s.append(seconds(a.device, premade))
    r, p = statistics.median(real_s), statistics.median(premade_s)
    print(f"  training core epoch (index + augment + step): {r / steps * 1000:.2f} ms/step "
          f"({steps * a.batch / r:,.0f} img/s)")
    print(f"  pre-made batch (step only):                  {p / steps * 1000:.2f} ms/step "
          f"({steps * a.batch / p:,.0f} img/s)")
    return r / p


# ---------------------------------------------------------------- profile: where a training step's time goes

def bench_profile(a: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The training core's step cut into its parts, each ended by a device sync (so on a GPU the parts
    no longer overlap with the host: the sum is a little above the real step time)."""
    cases = (("wrn_std-10-1", {"depth": 10, "width": 1}, 64), ("WRN-16-4 (wrn_std)", WRN, 32))
    print(f"\n[profile] one training step in parts, {a.profile_steps} steps after {a.warmup} warmup, eager")
    for label, kwargs, batch in cases:
        if a.quick:
            kwargs, batch, label = TINY["wrn_std"], a.batch, f"{label} as wrn_std {TINY['wrn_std']}"
        cfg = config(a, "wrn_std", kwargs, compile_=False, batch=batch)
        run = make_run(a, cfg, images, labels)
        images_d, labels_d = run.train_x, run.train_y
        generator = torch.Generator(device=a.device).manual_seed(0)
        order = torch.randperm(len(labels_d), device=a.device, generator=generator)
        parts = {"index + augment": 0.0, "forward + backward": 0.0, "optimizer step": 0.0, "metric sums": 0.0}
        sums = torch.zeros(2, device=a.device, dtype=torch.float64)
        run.model.train()
        steps = min(a.warmup + a.profile_steps, len(labels_d) // batch)
        for i in range(steps):
            clock = [time.perf_counter()]
            index = order[i * batch:(i + 1) * batch]
            x, y = run.augment(images_d[index], generator), labels_d[index]
            sync(a.device)
            clock.append(time.perf_counter())
            loss, logits = step.forward_backward(run, x, y)
            sync(a.device)
            clock.append(time.perf_counter())
            step.update(run, x, y)
            sync(a.device)
            clock.append(time.perf_counter())
            sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
            sync(a.device)
            clock.append(time.perf_counter())
            if i >= a.warmup:
                for name, start, end in zip(parts, clock, clock[1:], strict=False):
                    parts[name] += end - start
        total = sum(parts.values())
        timed = steps - a.warmup
        print(f"  {label} batch {batch}: {total / max(timed, 1) * 1000:.1f} ms/step; "
              + ", ".join(f"{name} {value / total:.1%}" for name, value in parts.items()))


# ---------------------------------------------------------------- pack: two trainings on one GPU

def pack_worker(a: argparse.Namespace) -> None:
    """One training process of the pack test: warm up, wait for the others, train for --pack-seconds."""
    images, labels, _ = load_images(a)
    cfg = config(a, "wrn_std", TINY["wrn_std"] if a.quick else WRN, compile_=False, batch=a.pack_batch)
    run = make_run(a, cfg, images, labels)
    images_d, labels_d = run.train_x, run.train_y
    generator = torch.Generator(device=a.device).manual_seed(os.getpid())
    run.model.train()

    def one_step() -> None:
        index = torch.randint(0, len(labels_d), (a.pack_batch,), device=a.device, generator=generator)
        step.step(run, run.augment(images_d[index], generator), labels_d[index])

    for _ in range(a.warmup):
        one_step()
    sync(a.device)
    Path(a.pack_dir, f"ready-{os.getpid()}").touch()
    while len(list(Path(a.pack_dir).glob("ready-*"))) < a.pack_peers:  # a barrier: measure together
        time.sleep(0.01)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < a.pack_seconds:
        for _ in range(10):
            one_step()
        steps += 10
        sync(a.device)
    elapsed = time.perf_counter() - started
    print(json.dumps({"images": steps * a.pack_batch, "seconds": elapsed}), flush=True)


def bench_pack(a: argparse.Namespace) -> float:
    print(f"\n[pack] wrn_std {TINY['wrn_std'] if a.quick else WRN} eager, batch {a.pack_batch}, training-core "
          f"step (index + augment + step), {a.pack_seconds:g} s measured per process after a barrier")
    rates = {}
    for peers in (1, 2):
        with tempfile.TemporaryDirectory(prefix="pack-") as directory:
            args = [sys.executable, __file__, "--pack-worker", "--pack-dir", directory, "--pack-peers", str(peers),
                    "--pack-batch", str(a.pack_batch), "--pack-seconds", str(a.pack_seconds),
                    "--warmup", str(a.warmup), "--n", str(a.n), "--compile-backend", a.compile_backend]
            args += ["--quick"] if a.quick else []
            args += ["--data", a.data] if a.data and not a.synthetic else []
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, torch.get_num_threads() // peers)))
            procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) for _ in range(peers)]
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError("a pack worker failed")
        rates[peers] = sum(o["images"] / o["seconds"] for o in outs)
        each = ", ".join(f"{o['images'] / o['seconds']:,.0f}" for o in outs)
        print(f"  {peers} process(es): {rates[peers]:,.0f} img/s aggregate ({each})", flush=True)
    return rates[2] / rates[1]


# ---------------------------------------------------------------- time to accuracy

def time_to_acc(a: argparse.Namespace) -> None:
    if not a.data:
        raise SystemExit("--time-to-acc needs --data DIR: a prepared CIFAR-10 (runner data prepare "
                         "parquet:../shared/data/cifar10-full.parquet DIR)")
    meta, test_split = data.load_test(a.data)
    train_split = data.load_split(a.data, "train", meta=meta)
    if int((test_split.labels < 0).sum()):
        raise SystemExit(f"{a.data}: the test split has no labels; time-to-accuracy needs them")
    epochs = a.epochs or (2 if a.quick else 40)
    kwargs = TINY["wrn_std"] if a.quick else WRN
    # A standard short CIFAR recipe for WRN-16-4: batch 512, SGD nesterov lr 0.4 (0.1 per 128 images),
    # cosine with 2 warmup epochs, wd 5e-4, label smoothing 0.1, crop 4 + flip. Not tuned on a GPU yet.
    cfg = config(a, "wrn_std", kwargs, compile_=not a.no_compile, batch=a.tta_batch,
                 **{"optimizer.lr": 0.1 * a.tta_batch / 128, "optimizer.weight_decay": 5e-4,
                    "schedule.name": "cosine", "schedule.warmup_epochs": min(2, epochs - 1),
                    "augment.cutout": 0, "train.label_smoothing": 0.1, "train.epochs": epochs})
    print(f"\n[time-to-acc] wrn_std {kwargs} on {a.data}: {len(train_split)} train, {len(test_split)} test "
          f"images; {epochs} epochs, batch {a.tta_batch}, lr {cfg['optimizer']['lr']:g}, "
          f"{'compiled' if cfg['train']['compile'] else 'eager'}, {cfg['train']['precision']}")
    reached: dict[float, float] = {}
    started = time.perf_counter()

    def report(metrics: dict, state) -> None:  # noqa: ANN001 - runner.train.Reporter
        elapsed = time.perf_counter() - started  # fit's epoch ends in a host sync, so this is device time too
        print(f"  epoch {metrics['epoch']:>3}  test acc {metrics['val_acc']:.4f}  "
              f"{metrics['images_per_s']:,.0f} img/s  at {elapsed:.1f} s", flush=True)
        for goal in (0.93, 0.94):
            if metrics["val_acc"] >= goal and goal not in reached:
                reached[goal] = elapsed

    result = train.fit(cfg, train_split, test_split, meta.classes, report, device=a.device)
    for goal in (0.93, 0.94):
        text = f"{reached[goal]:.1f} s" if goal in reached else f"not reached (best {result.best_val_acc:.4f})"
        print(f"time to {goal:.0%} test accuracy: {text} (from fit() called: data to the device, compile, "
              "training and the per-epoch test evaluation)")


# ---------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="prepared data dir (Parquet, read through runner.data)")
    p.add_argument("--synthetic", action="store_true", help="random images even when --data is given")
    p.add_argument("--n", type=int, default=50_000, help="random images without --data (default 50000)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--warmup", type=int, default=15, help="untimed steps first (compile, cudnn autotune)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per model figure")
    p.add_argument("--rounds", type=int, default=3, help="interleaved epochs per side in the loader test")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (--quick: aot_eager)")
    p.add_argument("--pack-batch", type=int, default=128, help="batch of each trial in the pack test")
    p.add_argument("--pack-seconds", type=float, default=20.0)
    p.add_argument("--sections", default="profile,loader,models,pack",
                   help="comma list of profile, loader, models, pack")
    p.add_argument("--profile-steps", type=int, default=20, help="timed steps per model in the profile")
    p.add_argument("--time-to-acc", action="store_true", help="only the CIFAR-10 time-to-93%%/94%% run")
    p.add_argument("--epochs", type=int, default=None, help="--time-to-acc epochs (default 40)")
    p.add_argument("--tta-batch", type=int, default=512, help="--time-to-acc batch")
    p.add_argument("--quick", action="store_true", help="tiny sizes on the CPU, to check the script runs")
    p.add_argument("--pack-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pack-dir", help=argparse.SUPPRESS)
    p.add_argument("--pack-peers", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.n, a.batch, a.warmup, a.steps, a.rounds, a.pack_batch, a.pack_seconds = 256, 16, 1, 2, 1, 16, 1.0
        a.profile_steps = 2
        a.tta_batch = 64
        if a.compile_backend == "inductor":
            a.compile_backend = "aot_eager"  # inductor's C++ build takes ~25 s per graph on a 2-core CPU
    a.device = torch.device("cpu") if a.quick or not torch.cuda.is_available() else torch.device("cuda")
    if a.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if a.pack_worker:
        pack_worker(a)
        return
    name = torch.cuda.get_device_name() if a.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    if a.time_to_acc:
        time_to_acc(a)
        return
    started = time.perf_counter()
    images, labels, source = load_images(a)
    print(f"data: {source}")
    sections = set(a.sections.split(","))
    if "profile" in sections:
        bench_profile(a, images, labels)
    loader = bench_loader(a, images, labels) if "loader" in sections else None
    release()
    if "models" in sections:
        bench_models(a, images)
    pack = bench_pack(a) if "pack" in sections else None
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if pack is not None:
        print(f"ratio 2 processes / 1 alone (aggregate img/s): {pack:.2f}x (goal >= 1.5x)")
    if loader is not None:
        print(f"ratio training-core loader / pre-made batch (step time): {loader:.3f}x (goal <= 1.05x)")


if __name__ == "__main__":
    main()
