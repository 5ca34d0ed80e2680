"""The training recipes, each by what it does: EMA of the weights, MixUp/CutMix, gradient clipping,
fp16 with a GradScaler, SyncBatchNorm. Each is off by default (the other test files run that path).

Run: .venv/bin/pytest tests/test_recipes.py
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runner import data, spec
from runner.core import checkpoint, step, train
from runner.core import ema as ema_module
from runner.core.mixing import Mixer, smooth_one_hot
from runner.data import Split

TINY = {"model.name": "wrn_std", "model.depth": 10, "model.width": 1, "data.path": "synthetic:300",
        "optimizer.name": "adam", "optimizer.lr": 0.003, "optimizer.weight_decay": 0.0,
        "train.batch_size": 32, "augment.crop_padding": 2, "train.epochs": 1}
MIX = {"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "mix_prob": 1.0, "mix_switch_prob": 0.5}


def tiny(**overrides) -> dict:
    return spec.trial_config({**TINY, **overrides})


def splits(cfg: dict) -> tuple[Split, Split, list[str]]:
    meta, train_split, val_split = data.load_trial_data(cfg["data"], seed=0)
    return train_split, val_split, meta.classes


def prepared(**overrides) -> train.Run:
    cfg = tiny(**overrides)
    return train.prepare(cfg, *splits(cfg), device=torch.device("cpu"))


def flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def a_batch(run: train.Run) -> tuple[torch.Tensor, torch.Tensor]:
    return run.augment.eval(run.train_x[:32]), run.train_y[:32]


# ---------------------------------------------------------------- EMA

def test_ema_update_is_the_warmed_up_moving_average():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ema_module.Ema(net, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.add_(2.0)
        net[1].num_batches_tracked.add_(7)
    decay = min(0.9, 2 / 11)  # (1 + t) / (10 + t) at the first update
    ema.update()
    got = ema.module.state_dict()
    torch.testing.assert_close(got["0.weight"], decay * start["0.weight"] + (1 - decay) * net[0].weight)
    torch.testing.assert_close(got["1.running_mean"], start["1.running_mean"] + (1 - decay) * 2.0)
    assert int(got["1.num_batches_tracked"]) == 7  # integer buffers are copied, not averaged
    for _ in range(200):
        ema.update()
    assert ema.decay_now() == 0.9  # the warmup ends where the configured decay is lower


def test_evaluation_checkpoints_and_registration_use_the_ema_weights():
    cfg = tiny(**{"train.ema_decay": 0.9, "train.epochs": 2})
    train_split, val_split, classes = splits(cfg)
    states = []
    result = train.fit(cfg, train_split, val_split, classes, lambda m, state: states.append((m, state())))
    metrics, last = states[-1]
    assert last["ema_updates"] == 2 * (len(train_split) // 32)
    live, average = flat_state(last["train_model"], result.model), flat_state(last["model"], result.model)
    assert not torch.allclose(live, average)  # two different weight sets travel
    assert torch.equal(flat(result.model), average)  # fit returns the average
    # What registration and submission build from a checkpoint is the average, and its accuracy is the
    # val_acc the epoch reported: evaluation used the average too.
    net = checkpoint.build_model(last)
    assert torch.equal(flat(net), average)
    run = train.prepare(cfg, train_split, val_split, classes, device=torch.device("cpu"))
    with torch.no_grad():
        predicted = net(run.augment.eval(run.val_x)).argmax(1)
    assert (predicted == run.val_y).float().mean().item() == pytest.approx(metrics["val_acc"])


def flat_state(weights: dict, net: torch.nn.Module) -> torch.Tensor:
    """The parameters of a checkpoint's weights, in `flat(net)`'s order."""
    return torch.cat([weights[name].reshape(-1) for name, _ in net.named_parameters()])


def test_resume_with_ema_gives_the_same_live_and_average_weights(tmp_path):
    cfg = tiny(**{"train.ema_decay": 0.8, "train.epochs": 2, "optimizer.name": "sgd", "optimizer.lr": 0.05})
    train_split, val_split, classes = splits(cfg)
    states = []

    def keep(metrics, state):
        states.append(state())
        if metrics["epoch"] == 1:
            checkpoint.save(states[0], str(tmp_path))  # the optimizer's state is live: save it now
    train.fit(cfg, train_split, val_split, classes, keep)
    resumed = []
    train.fit(cfg, train_split, val_split, classes, lambda m, state: resumed.append(state()),
              resume=checkpoint.load(str(tmp_path)))
    for key in ("model", "train_model"):
        for name, value in states[-1][key].items():
            assert torch.equal(value, resumed[-1][key][name]), (key, name)


# ---------------------------------------------------------------- MixUp / CutMix

def mixer(**cfg) -> Mixer:
    return Mixer({**MIX, **cfg}, num_classes=10, smoothing=0.0)


def test_mixed_targets_are_probabilities_with_label_smoothing():
    x, y = torch.randn(512, 3, 8, 8), torch.randint(0, 10, (512,))
    out, target = Mixer(MIX, num_classes=10, smoothing=0.1)(x, y, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and target.shape == (512, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(512))
    assert float(target.min()) >= 0.1 / 10 - 1e-6  # smoothing keeps every class above s / C
    off = Mixer({**MIX, "mix_prob": 0.0}, num_classes=10, smoothing=0.1)(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(off[0], x)
    torch.testing.assert_close(off[1], smooth_one_hot(y, 10, 0.1))


def own_share(target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """lambda per sample, read back from the target (labels of a pair must differ)."""
    return target.gather(1, y.view(-1, 1)).squeeze(1)


def test_mixup_is_a_per_sample_convex_mix_with_the_reversed_batch():
    b = 1000
    x, y = torch.randn(b, 3, 8, 8), torch.arange(b) % 2  # y and y.flip(0) always differ (b even)
    out, target = mixer(cutmix_alpha=0.0)(x, y, torch.Generator().manual_seed(1))
    lam = own_share(target, y)
    expected = lam.view(b, 1, 1, 1) * x + (1 - lam.view(b, 1, 1, 1)) * x.flip(0)
    torch.testing.assert_close(out, expected)
    assert lam.std() > 0.2 and 0.45 < lam.mean() < 0.55  # Beta(1, 1): a lambda per sample, uniform


def test_cutmix_pastes_one_box_whose_area_is_the_target_share():
    b = 1000
    x, y = torch.randn(b, 3, 16, 16), torch.arange(b) % 2
    out, target = mixer(mixup_alpha=0.0)(x, y, torch.Generator().manual_seed(2))
    own = (out == x).all(1)  # [B, H, W]: pixels of the sample itself
    assert torch.equal(own | (out == x.flip(0)).all(1), torch.ones_like(own))  # every pixel from one of the two
    torch.testing.assert_close(own.float().mean(dim=(1, 2)), own_share(target, y))
    pasted = ~own
    rows, cols = pasted.any(2), pasted.any(1)
    assert torch.equal(pasted, rows.unsqueeze(2) & cols.unsqueeze(1))  # the pasted pixels form a rectangle
    assert 0.3 < pasted.float().mean() < 0.7


def test_both_on_switches_per_sample_between_mixup_and_cutmix():
    b = 2000
    x, y = torch.randn(b, 3, 8, 8), torch.arange(b) % 2
    out, _ = mixer(mix_switch_prob=0.25)(x, y, torch.Generator().manual_seed(3))
    boxed = ((out == x).all(1) | (out == x.flip(0)).all(1)).all(dim=(1, 2))  # CutMix: every pixel unblended
    assert 0.18 < boxed.float().mean() < 0.32


def test_fit_trains_on_mixed_batches():
    """The first training batch the network sees is a per-sample mix of the plain augmented batch."""
    seen = {}

    def first_input(name):
        def hook(module, args):
            seen.setdefault(name, args[0].detach().clone())
        return hook

    for name, mix in (("plain", {}), ("mixed", {"augment.mixup_alpha": 1.0})):
        run = prepared(**mix)
        run.net.register_forward_pre_hook(first_input(name))
        train.train_epoch(run, 0)
    plain, mixed = seen["plain"], seen["mixed"]
    b = plain.shape[0]
    partner = plain.flip(0)
    # Solve mixed_i = lam_i * plain_i + (1 - lam_i) * partner_i for lam_i; the residual must vanish.
    d, m = (plain - partner).reshape(b, -1), (mixed - partner).reshape(b, -1)
    lam = (d * m).sum(1) / (d * d).sum(1)
    torch.testing.assert_close(mixed, partner + lam.view(b, 1, 1, 1) * (plain - partner), rtol=0, atol=1e-4)
    assert ((lam > -1e-4) & (lam < 1 + 1e-4)).all() and (lam < 0.99).sum() > b // 2


# ---------------------------------------------------------------- gradient clipping

@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_clipping_bounds_the_gradient_norm_of_each_step(precision):
    plain = {"optimizer.name": "sgd", "optimizer.lr": 1.0, "optimizer.momentum": 0.0,
             "optimizer.weight_decay": 0.0, "train.precision": precision}
    moved = {}
    for limit in (0.0, 1e-3):
        run = prepared(**plain, **{"optimizer.clip_grad_norm": limit})
        before = flat(run.net).clone()
        step.step(run, *a_batch(run))
        moved[limit] = float((flat(run.net) - before).norm())  # = lr x the (clipped) gradient norm
    assert moved[1e-3] == pytest.approx(1e-3, rel=1e-2)  # fp16: unscaled before clipping
    assert moved[0.0] > 0.05


# ---------------------------------------------------------------- fp16 with a GradScaler

def test_fp16_skips_an_overflowing_step_and_lowers_the_scale():
    run = prepared(**{"train.precision": "fp16", "optimizer.name": "sgd", "optimizer.lr": 0.1})
    assert run.autocast_dtype is torch.float16 and run.scaler is not None
    x, y = a_batch(run)
    scale, before = run.scaler.get_scale(), flat(run.net).clone()
    step.step(run, torch.full_like(x, float("inf")), y)  # every gradient inf/nan
    assert torch.equal(flat(run.net), before) and run.scaler.get_scale() == scale / 2
    step.step(run, x, y)
    assert not torch.equal(flat(run.net), before) and torch.isfinite(flat(run.net)).all()


def test_fp16_trains_and_reports_its_loss_scale():
    cfg = tiny(**{"train.precision": "fp16", "optimizer.name": "adamw", "train.epochs": 2})
    seen = []
    train.fit(cfg, *splits(cfg), lambda m, state: seen.append((m, state())))
    assert seen[-1][0]["train_loss"] < seen[0][0]["train_loss"]
    assert seen[-1][0]["loss_scale"] > 0 and "scale" in seen[-1][1]["scaler"]


def test_precision_auto_is_fp32_on_the_cpu_and_fp16_is_refused_where_it_would_sync():
    assert prepared().autocast_dtype is None and prepared().scaler is None
    for bad in ({"optimizer.name": "nadam"}, {"optimizer.name": "sgd", "optimizer.sam_rho": 0.05}):
        with pytest.raises(spec.SpecError, match="train.precision.*fp16 needs optimizer.name sgd | adam | adamw"):
            tiny(**{"train.precision": "fp16", **bad})


# ---------------------------------------------------------------- SyncBatchNorm

def test_sync_bn_is_a_no_op_for_one_worker_and_refused_for_cpu_ddp_workers():
    run = prepared(**{"train.sync_bn": True})
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in run.net.modules())
    with pytest.raises(spec.SpecError, match="train.sync_bn.*GPUs only"):
        tiny(**{"train.sync_bn": True, "scaling.workers": 2, "scaling.gpus_per_worker": 0})


def _ddp_worker(rank: int, port: int, errors: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = tiny(**{"train.sync_bn": True})
        train.prepare(cfg, *splits(cfg), device=torch.device("cpu"))
    except ValueError as err:
        errors[rank] = str(err)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_sync_bn_on_cpu_ddp_workers_stops_before_the_first_step():
    """gpus_per_worker "auto" can resolve to none; the worker then says so instead of failing in torch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, errors), nprocs=2)
    assert sorted(errors) == [0, 1] and "train.sync_bn" in errors[0] and "GPUs only" in errors[0]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm needs two GPUs (NCCL ranks)")
def test_sync_bn_converts_every_batchnorm_on_gpu_workers():  # pragma: no cover - no GPU in CI
    # Runs where two GPUs are: each rank converts; the statistics then come from the global batch.
    net = train._build_model(tiny(**{"train.sync_bn": True}), 10, torch.device("cuda", 0), world=2)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in net.modules())
