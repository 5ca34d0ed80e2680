"""The benchmarks still run: each bench script at `--quick` size on the CPU prints its ratio line last.

Smoke tests only (the figures at these sizes mean nothing); docs/benchmarks.md holds the real ones.
The two Ray benchmarks start a local Ray each (marked `ray`); `tune_overhead.py --quick` runs `runner run`
on a one-trial grid, whose fixed cost (ray.init with the dashboard, MLflow, one Ray Train trial, shutdown)
is ~35-40 s of this module's ~90 s (up to ~110 s under load) on 2 shared cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def run_bench(script: str, *args: str, timeout: float) -> list[str]:
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout.strip().splitlines()


@pytest.mark.timeout(150)
def test_gpu_bench_runs_every_section_on_the_cpu():
    lines = run_bench("gpu.py", timeout=140)
    assert lines[-1].startswith("ratio training-core loader / pre-made batch")
    assert lines[-2].startswith("ratio 2 processes / 1 alone")
    for section in ("[profile]", "[loader]", "[models]", "[pack]"):
        assert any(line.startswith(section) for line in lines), section
    models = [line for line in lines if "ms/step; warmup" in line]
    assert len(models) == 5 and sum(" compiled " in line for line in models) == 1  # 4 models eager, 1 compiled


@pytest.mark.timeout(120)
def test_augment_bench_prints_both_ratios():
    lines = run_bench("augment.py", "--workers", "1", timeout=110)
    assert lines[-1].startswith("ratio batched/PIL")


@pytest.mark.timeout(120)
def test_verify_bench_prints_both_ratios():
    lines = run_bench("verify.py", timeout=110)
    assert lines[-2].startswith("ratio verify / one trial's load")
    assert lines[-1].startswith("ratio synthetic metadata, drawn / from labels")


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_ray_overhead_bench_compares_steady_epochs():
    lines = run_bench("ray_overhead.py", timeout=170)
    assert lines[-1].startswith("ratio Ray/direct (steady-state epoch time)")
    assert any(line.startswith("Ray Train: steady epoch") for line in lines)


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_tune_overhead_bench_runs_the_runner_and_reports_start_latency():
    lines = run_bench("tune_overhead.py", timeout=230)
    assert lines[-1].startswith("ratio runner grid / (direct sum / ")
    assert any("trial start latency" in line for line in lines)


@pytest.mark.timeout(120)
def test_checkpoint_upload_bench_uploads_to_its_own_s3_endpoint():
    lines = run_bench("checkpoint_upload.py", "--epochs", "2", timeout=110)  # --quick: the direct side, no Ray
    assert lines[-1].startswith("ratio direct upload / stand-in epoch")
    assert any(line.startswith("direct upload:") and "MiB/s" in line for line in lines)


@pytest.mark.timeout(180)
def test_logged_model_cost_bench_compares_before_and_now_against_a_real_server():
    lines = run_bench("logged_model_cost.py", timeout=170)
    assert lines[-1].startswith("ratio now / before: time ")
    assert any(line.startswith("now: checkpoint less optimizer state + logged model") for line in lines)


@pytest.mark.timeout(240)
def test_tracking_load_bench_runs_both_writers_against_a_real_server_and_drops_nothing():
    lines = run_bench("tracking_load.py", timeout=230)
    assert lines[-1].startswith("ratio results/s written after / before")
    dropped = [line for line in lines if "dropped:" in line]
    assert len(dropped) == 2 and all(" dropped: 0 of " in line and "unsent at flush: 0" in line for line in dropped)
