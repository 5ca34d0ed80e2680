"""runner/cost.py and runner/tracking/estimate.py: resource-hours and throughput of a trial, and the
`runner check --cluster-gpus N` estimate built from earlier trials tracked in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli, cost, spec
from runner.resources import TrialNeed
from runner.tracking import estimate
from runner.tracking.tracker import Tracker


def need(name: str = "t", workers: int = 1, gpus: float = 1.0, cpus: float = 2.0) -> TrialNeed:
    return TrialNeed(name, trial_cpus=1.0, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)


def test_trial_cost_is_wall_time_times_what_it_holds() -> None:
    got = cost.trial_cost(need(workers=2, gpus=0.5), wall_s=3600.0, images_per_s=[1000.0, 3000.0, float("nan")])
    assert got[cost.CPU_HOURS] == pytest.approx(5.0) and got[cost.GPU_HOURS] == pytest.approx(1.0)
    assert got[cost.PER_WORKER] == pytest.approx(1000.0) and got[cost.PER_GPU] == pytest.approx(2000.0)
    cpu_only = cost.trial_cost(need(gpus=0.0), wall_s=60.0, images_per_s=[])
    assert cpu_only[cost.GPU_HOURS] == 0 and cost.PER_WORKER not in cpu_only and cost.PER_GPU not in cpu_only
    assert cost.total([got, cpu_only, {}])[cost.CPU_HOURS] == pytest.approx(5.0 + 3 * 60 / 3600)


def test_estimate_grid_places_trials_as_gpus_free_up() -> None:
    one_gpu = [cost.Planned(need(f"t{i}"), images=3600_000, images_per_s_per_worker=1000.0) for i in range(4)]
    assert cost.estimate_grid(one_gpu, cluster_gpus=2) == (pytest.approx(7200.0), pytest.approx(4.0))
    assert cost.estimate_grid(one_gpu, cluster_gpus=8)[0] == pytest.approx(3600.0)
    halves = [cost.Planned(need(f"h{i}", gpus=0.5), 3600_000, 1000.0, start_s=60) for i in range(4)]
    assert cost.estimate_grid(halves, cluster_gpus=1) == (pytest.approx(2 * 3660.0), pytest.approx(2 * 3660 / 3600))
    assert cost.estimate_grid(one_gpu, cluster_gpus=8, cluster_cpus=6)[0] == pytest.approx(7200.0)  # 3 CPUs each
    mixed = [cost.Planned(need("long"), 7200_000, 1000.0), *one_gpu[:2]]
    assert cost.estimate_grid(mixed, cluster_gpus=2)[0] == pytest.approx(7200.0)  # the short ones share a GPU
    with pytest.raises(ValueError, match=r"trial 'big' needs .* a cluster of 1 GPU can never start it"):
        cost.estimate_grid([cost.Planned(need("big", workers=2), 1, 1.0)], cluster_gpus=1)


@pytest.fixture
def history(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Two earlier WRN trials on 1 GPU each at 1,000 images/s, and a CPU one at 50: tracked as `runner
    run` tracks them (the tracker computes their cost from what they held)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    with Tracker("earlier", tracking_uri) as tracker:
        tracker.start_parent()
        for name, gpus, rate in (("g0", 1.0, 1000.0), ("g1", 1.0, 1000.0), ("c0", 0.0, 50.0)):
            scaling = {"workers": 1, "cpus_per_worker": 1.0, "gpus_per_worker": gpus, "trial_cpus": 1.0}
            run_id = tracker.start_trial(name, name, {"model": {"name": "wrn"}, "scaling": scaling})
            tracker.log_epoch(run_id, {"epoch": 1, "val_acc": 0.5, "images_per_s": rate, "epoch_s": 1.0})
            tracker.finish_trial(run_id, "FINISHED")
        tracker.finish_parent()
    return tracking_uri


def grid_spec(tmp_path: Path, gpus: float | str = 1.0) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(f"""name: grid
base:
  data: {{path: "synthetic:200", val_fraction: 0.1}}
  model: {{name: wrn, depth: 10, width: 1}}
  train: {{epochs: 100}}
  scaling: {{workers: 1, cpus_per_worker: 1, gpus_per_worker: {gpus}, trial_cpus: 1}}
grid:
  optimizer.lr: [0.1, 0.05, 0.02, 0.01]
""")
    return path


def test_estimate_from_earlier_trials_of_the_family(history: str, tmp_path: Path) -> None:
    trials = spec.load_spec(str(grid_spec(tmp_path))).trials
    found = estimate.estimate(trials, cluster_gpus=2)
    per_trial = 100 * 180 / 1000.0  # epochs x (200 train images less 10% validation) / images/s
    assert all(s == pytest.approx(per_trial, abs=1.0) for s in found.seconds.values())
    assert found.wall_s == pytest.approx(2 * per_trial, abs=2.0)  # 4 one-GPU trials on 2 GPUs: two waves
    assert found.gpu_hours == pytest.approx(4 * per_trial / 3600, rel=0.1)
    assert "wrn on GPU: 2 earlier trial(s), median 1,000 images/s per worker" in found.notes[0]

    auto = estimate.estimate(spec.load_spec(str(grid_spec(tmp_path, "auto"))).trials, cluster_gpus=2)
    assert auto.wall_s == pytest.approx(found.wall_s)  # "auto" is one GPU per worker on a GPU cluster
    on_cpu = estimate.estimate(spec.load_spec(str(grid_spec(tmp_path, 0))).trials, cluster_gpus=0, cluster_cpus=2)
    assert on_cpu.seconds[trials[0].name] == pytest.approx(360.0, abs=1.0)
    other = estimate.estimate(spec.load_spec(str(grid_spec(tmp_path))).trials[:1], cluster_gpus=2,
                              tracking_uri=f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    assert other.wall_s is None and "no MLflow store yet" in other.notes[0]
    assert not (tmp_path / "none").exists()  # check writes nothing, not even an empty store


def test_runner_check_cluster_gpus_prints_the_estimate(history: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["check", str(grid_spec(tmp_path)), "--cluster-gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "grid on 8 GPUs: wall 0.3 min, 0.02 GPU-hours" in out and "est. time" in out
    assert cli.main(["check", str(grid_spec(tmp_path)), "--set", "model.name=wrn_std", "--cluster-gpus", "8"]) == 0
    assert "no grid estimate (wrn_std on GPU: no earlier trial to go on)" in capsys.readouterr().out


def test_runner_check_cluster_cpus_sets_how_many_cpu_trials_run_at_once(history: str, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    cpu_grid = str(grid_spec(tmp_path, 0))  # 4 trials of 2 CPUs each (driver + worker), 6 min each
    assert cli.main(["check", cpu_grid, "--cluster-gpus", "0", "--cluster-cpus", "2"]) == 0
    assert "grid on 0 GPUs: wall 24.0 min" in capsys.readouterr().out  # one at a time
    assert cli.main(["check", cpu_grid, "--cluster-gpus", "0", "--cluster-cpus", "4"]) == 0
    assert "grid on 0 GPUs: wall 12.0 min" in capsys.readouterr().out  # two at a time
