"""runner/submission.py + runner/core/predict.py: raw-image predictions with TTA, the atomic submission CSV
(created with the umask's mode), and scoring (no MLflow needed here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import models
from runner import submission as submit
from runner.core.predict import InputError, Predictor
from runner.submission import SubmissionError


def write(path: Path, rows: list[tuple[str, str]], header: str = "id,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{i},{label}\n" for i, label in rows))
    return path


def test_score_is_accuracy(tmp_path: Path) -> None:
    solution = write(tmp_path / "solution.csv", [("a", "cat"), ("b", "dog"), ("c", "7"), ("d", "cat")],
                     header="id,label")
    sub = write(tmp_path / "sub.csv", [("d", "dog"), ("c", "07"), ("b", "dog"), ("a", "cat")])
    assert submit.score(sub, solution) == pytest.approx(0.75)  # order free; "07" == "7"


def test_score_refuses_mismatched_ids_naming_offenders(tmp_path: Path) -> None:
    solution = write(tmp_path / "solution.csv", [(f"s{i}", "x") for i in range(10)])
    sub = write(tmp_path / "sub.csv", [(f"s{i}", "x") for i in range(3, 10)] + [("zz1", "x"), ("zz2", "x")])
    with pytest.raises(SubmissionError, match=r"3 ids of solution .* missing .* \['s0', 's1', 's2'\].*"
                                              r"2 ids in submission .* \['zz1', 'zz2'\]"):
        submit.score(sub, solution)


def test_write_submission_order_labels_and_atomic(tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    out.write_text("old\n")
    submit.write_submission(out, ["b", "a", "c"], torch.tensor([1, 0, 2]), ["03", "1", "2"],
                            label_names_are_ints=True, order=["a", "b", "c"])
    assert out.read_text() == "id,label\na,3\nb,1\nc,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]  # no temp file left

    with pytest.raises(SubmissionError, match=r"missing from test split, first \['d'\]"):
        submit.write_submission(out, ["a", "b", "c"], [0, 0, 0], ["x"], order=["a", "b", "c", "d"])
    assert out.read_text().startswith("id,label\na,3")  # the old file stands; nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_predictor_averages_softmax_over_tta_views_from_raw_uint8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = models.build("wrn", 4, depth=10, width=1)
    torch.nn.init.normal_(net.state_dict()[[k for k in net.state_dict() if k.endswith("weight")][-1]], std=0.01)
    state = {"model": net.state_dict(), "config": {"model": {"name": "wrn", "depth": 10, "width": 1}},
             "classes": list("wxyz"), "mean": [0.5] * 3, "std": [0.25] * 3, "image_shape": [32, 32, 3]}
    predictor = Predictor.from_state(state)
    images = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    flips = {"tta": "flips", "views": 2}
    probs = predictor.probabilities(images, flips, batch_size=2)  # the last batch holds one image
    assert probs.shape == (5, 4) and torch.allclose(probs.sum(1), torch.ones(5))
    x = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        net.eval()
        expected = (net(x).softmax(1) + net(x.flip(3)).softmax(1)) / 2
    assert torch.allclose(probs, expected, atol=1e-5)
    assert predictor.labels(probs) == ["wxyz"[i] for i in expected.argmax(1).tolist()]
    assert predictor.eval == {"tta": "none", "views": 1}  # a checkpoint without an eval group: no TTA
    assert torch.allclose(predictor.probabilities(images.numpy()), net(x).softmax(1), atol=1e-5)
    with pytest.raises(InputError, match=r"tta flips takes 2..10 views, got 11"):
        predictor.probabilities(images, {"tta": "flips", "views": 11})
    with pytest.raises(InputError, match=r"3 views need tta flips or train_transforms"):
        predictor.probabilities(images, {"views": 3})


def test_train_transforms_views_draw_the_trials_own_augmentation_reproducibly() -> None:
    from runner import spec

    torch.manual_seed(0)
    net = models.build("wrn", 4, depth=10, width=1)
    torch.nn.init.normal_(net.state_dict()[[k for k in net.state_dict() if k.endswith("weight")][-1]], std=0.01)
    cfg = spec.trial_config({"model.name": "wrn", "model.depth": 10, "model.width": 1, "augment.cutout": 8,
                             "eval.tta": "train_transforms", "eval.views": 4})
    state = {"model": net.state_dict(), "config": cfg, "classes": list("wxyz"), "mean": [0.5] * 3,
             "std": [0.25] * 3}
    predictor = Predictor.from_state(state)
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    drawn = predictor.probabilities(images)
    assert torch.equal(drawn, predictor.probabilities(images))  # seeded: the same call, the same draws
    assert not torch.allclose(drawn, predictor.probabilities(images, {"tta": "none", "views": 1}))


def test_predictor_refuses_images_it_cannot_take_naming_what_it_takes() -> None:
    net = models.build("wrn", 3, depth=10, width=1)
    predictor = Predictor.from_state({"model": net.state_dict(), "config": {"model": {"name": "wrn", "depth": 10,
                                      "width": 1}}, "classes": list("abc"), "mean": [0.5] * 3, "std": [0.25] * 3})
    good = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)  # an old checkpoint without image_shape: 32x32
    with pytest.raises(InputError, match=r"expected uint8 images of shape \(N, 32, 32, 3\).*got dtype torch.float32"):
        predictor.probabilities(good.float() / 255)
    for bad in (good[:, :, :, :1], good.permute(0, 3, 1, 2), good[0]):
        with pytest.raises(InputError, match=r"expected uint8 images of shape \(N, 32, 32, 3\).*got shape"):
            predictor.probabilities(bad)


def test_load_for_inference_from_checkpoint_path(tmp_path: Path) -> None:
    net = models.build("wrn", 3, depth=10, width=1)
    torch.save({"model": net.state_dict(), "config": {"model": {"name": "wrn", "depth": 10, "width": 1}},
                "classes": ["a", "b", "c"], "mean": [0.1] * 3, "std": [0.2] * 3}, tmp_path / "state.pt")
    for uri in (tmp_path, tmp_path / "state.pt"):
        model = submit.load_for_inference(str(uri))
        assert model.classes == ["a", "b", "c"] and model.mean == [0.1] * 3 and not model.model.training
    with pytest.raises(SubmissionError, match="no such checkpoint"):
        submit.load_for_inference(str(tmp_path / "nope"))


def test_make_submission_from_a_checkpoint_scores_against_synthetic_labels(tmp_path: Path) -> None:
    from runner import data

    meta, test = data.load_test("synthetic:64")
    net = models.build("wrn", len(meta.classes), depth=10, width=1)
    state = {"model": net.state_dict(), "config": {"model": {"name": "wrn", "depth": 10, "width": 1}},
             "classes": meta.classes, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save(state, tmp_path / "state.pt")
    previous = os.umask(0o027)
    try:
        out = submit.make_submission(str(tmp_path), "synthetic:64", tmp_path / "sub.csv", device="cpu",
                                     eval={"tta": "flips", "views": 2})
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o640  # the umask's mode, as every other tool creates files
    labels = Predictor.from_state(state).probabilities(test.images, {"tta": "flips", "views": 2}).argmax(1)
    solution = write(tmp_path / "solution.csv", [(i, meta.classes[k]) for i, k in zip(test.ids, test.labels.tolist(),
                                                                                      strict=True)])
    assert submit.score(out, solution) == pytest.approx((labels == test.labels).float().mean().item())

    torch.save({**state, "classes": [f"x{i}" for i in range(len(meta.classes))]}, tmp_path / "state.pt")
    with pytest.raises(SubmissionError, match="trained on classes"):
        submit.make_submission(str(tmp_path), "synthetic:64", tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()


def test_cli_tta_takes_views_or_a_mode_and_refuses_bad_values_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from runner import cli

    parse = cli._parser().parse_args
    base = ["submit", "--model", "m", "--data", "d", "--out", "o", "--tta"]
    assert parse([*base, "4"]).tta == {"tta": "flips", "views": 4}  # the README's `--tta 4`
    assert parse([*base, "1"]).tta == {"tta": "none", "views": 1}
    assert parse([*base, "train_transforms:8"]).tta == {"tta": "train_transforms", "views": 8}
    assert parse(base[:-1]).tta is None  # the model's own eval group
    for bad, why in (("flips:11", "flips takes 2..10 views"), ("0", "must be >= 1"), ("sharpen", "must be one of")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["run", "spec.yaml", "--tta", bad])
        assert exit_.value.code == 2 and why in capsys.readouterr().err
