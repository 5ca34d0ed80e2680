"""The resource arithmetic that refuses grids Ray would wait on forever."""

from __future__ import annotations

import pytest

from runner.resources import ResourceError, TrialNeed, plan_concurrency


def need(trial=1.0, workers=2, cpu=1.0, gpu=0.0, name="t"):
    return TrialNeed(name, trial, workers, cpu, gpu)


def test_the_measured_deadlock_is_refused_with_the_arithmetic():
    # Measured: on 2 CPUs a 1-CPU trial + 2 one-CPU workers retries its start timeout forever.
    with pytest.raises(ResourceError) as err:
        plan_concurrency([need()], {"CPU": 2.0})
    message = str(err.value)
    assert "1 trial CPU + 2 workers x 1 CPU = 3 CPU" in message and "2 CPU" in message and "'t'" in message


def test_fractional_workers_fit_and_concurrency_is_derived():
    assert plan_concurrency([need(0.5, 2, 0.25)] * 4, {"CPU": 2.0}) == 2
    assert plan_concurrency([need(1, 2, 0.5)] * 3, {"CPU": 2.0}) == 1
    assert plan_concurrency([need(0.5, 1, 0.25)], {"CPU": 8.0}) == 1  # never more than the trials


def test_requested_concurrency_beyond_the_cluster_is_refused():
    with pytest.raises(ResourceError, match="--max-concurrent 2 cannot be placed.*at most 1"):
        plan_concurrency([need(1, 2, 0.5)] * 2, {"CPU": 2.0}, requested=2)
    assert plan_concurrency([need(1, 2, 0.5)] * 2, {"CPU": 4.0}, requested=2) == 2


def test_fractional_gpus_pack_trials_onto_one_gpu():
    half = need(1, 1, 1, 0.5)
    assert plan_concurrency([half] * 4, {"CPU": 16.0, "GPU": 1.0}) == 2
    with pytest.raises(ResourceError, match=r"1 process: 1 trial CPU \+ 1 worker CPU = 2 CPU, 0.5 GPU"):
        plan_concurrency([half], {"CPU": 16.0})
    with pytest.raises(ResourceError, match="2 workers x 0.5 GPU = 1 GPU"):
        plan_concurrency([need(1, 2, 1, 0.5)], {"CPU": 16.0})
    assert plan_concurrency([need(1, 4, 1, 1)] * 8, {"CPU": 64.0, "GPU": 8.0}) == 2


def test_each_path_requests_its_real_processes_and_the_arithmetic_counts_those_requests():
    # one worker: the trial trains in its own process, which holds the worker's share (one bundle)
    solo = need(0.5, 1, 0.25, 0.5)
    assert solo.in_process and solo.bundles() == [{"CPU": 0.75, "GPU": 0.5}]
    assert solo.trial_bundle("trial_driver") == {"CPU": 0.75, "GPU": 0.5}  # trains where the GPUs are
    # DDP: the trial process drives a TorchTrainer; each worker holds its own bundle
    ddp = need(0.5, 2, 0.25, 1.0)
    assert not ddp.in_process and ddp.trial_bundle() == {"CPU": 0.5}
    assert ddp.trial_bundle("trial_driver") == {"CPU": 0.5, "trial_driver": 0.001}  # pinned: its loss is the trial's
    assert ddp.worker_bundle() == {"CPU": 0.25, "GPU": 1.0}
    assert ddp.bundles() == [{"CPU": 0.5}] + [ddp.worker_bundle()] * 2
    for n in (solo, ddp):  # the arithmetic is the sum of exactly what is requested
        assert n.cpus == sum(b["CPU"] for b in n.bundles()) and n.gpus == sum(b.get("GPU", 0) for b in n.bundles())


@pytest.mark.parametrize("requested", [0, -1])
def test_a_concurrency_below_one_is_refused_not_hung(requested):
    with pytest.raises(ResourceError, match=f"--max-concurrent {requested}: must be at least 1"):
        plan_concurrency([need(0.5, 1, 0.5)], {"CPU": 2.0}, requested=requested)


def test_autoscaling_capacity_counts_what_the_autoscaler_may_add():
    from runner.resources import autoscaling_capacity, larger_of

    launcher = {"max_workers": 5, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 8, "GPU": 0}, "max_workers": 0},
        "gpu1": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 4},
        "gpu4": {"resources": {"CPU": 48, "GPU": 4}, "min_workers": 0, "max_workers": 2}}}
    capacity = autoscaling_capacity(launcher)
    # cluster-wide max_workers 5: the two 4-GPU nodes first, then three 1-GPU nodes
    assert capacity == {"CPU": 8 + 2 * 48 + 3 * 8, "GPU": 2 * 4 + 3 * 1}
    gpu_trial = need(1, 1, 4, 1.0)
    with pytest.raises(ResourceError):
        plan_concurrency([gpu_trial], {"CPU": 8.0, "GPU": 0.0})  # head only: refused without the config
    assert plan_concurrency([gpu_trial] * 20, larger_of({"CPU": 8.0}, capacity)) == 11
