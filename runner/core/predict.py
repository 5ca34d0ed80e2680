"""Predictions from a trained network: raw uint8 images in, class probabilities out. Plain PyTorch.

The one predict path. `runner submit` with a checkpoint, the registered MLflow model
(`runner.tracking.pyfunc`, which `runner submit` and `mlflow models serve` load) all call
`Predictor.probabilities`: check the batch, scale to [0, 1], normalise with the training split's
per-channel statistics, NHWC -> NCHW, run the network on each test-time view (the trial's `eval` group,
as validation scored it: `Augment.views`) and average the softmax.

    predictor = Predictor.from_state(checkpoint.load("ckpt/"), device="cpu")
    probs = predictor.probabilities(images)                          # uint8 [N, H, W, 3], training size
    probs = predictor.probabilities(images, {"tta": "flips", "views": 4})   # another eval setting
    labels = predictor.labels(probs)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.core import checkpoint
from runner.core.augment import MAX_TTA_VIEWS, Augment

BATCH = 256
LEGACY_SIZE = 32  # checkpoints written before `image_shape` was recorded were all 32x32
NO_TTA = {"tta": "none", "views": 1}
TTA_MODES = ("none", "flips", "train_transforms")
DRAW_SEED = 0  # train_transforms views: the same draws for the same call, wherever it runs


class InputError(ValueError):
    """Images the network cannot take: wrong dtype, rank or size. The message names the expected ones."""


@dataclass
class Predictor:
    model: torch.nn.Module  # in eval mode, on `device`
    classes: list[str]
    mean: list[float]  # per channel, in [0, 1] units: the training split's statistics
    std: list[float]
    image_shape: tuple[int, int, int]  # (H, W, C) the network was trained at
    augment: Augment  # the trial's own augmentation: its `views` are the test-time views
    eval: dict  # {"tta": none | flips | train_transforms, "views": K}: the trial's own, unless overridden
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> Predictor:
        """From a checkpoint dict (see runner.core.checkpoint), on `device`."""
        device = torch.device(device)
        config = state.get("config") or {}
        return cls(model=checkpoint.build_model(state).to(device), classes=list(state["classes"]),
                   mean=list(state["mean"]), std=list(state["std"]), image_shape=image_shape(state),
                   augment=Augment(config.get("augment") or {}, state["mean"], state["std"], channels_last=False),
                   eval=eval_settings(state), device=device)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor | np.ndarray, eval: Mapping[str, Any] | None = None,
                      batch_size: int = BATCH) -> torch.Tensor:
        """Softmax probabilities [N, classes] (float32, on the CPU), averaged over the test-time views of
        `eval` (default: the trial's own eval group)."""
        images = check_images(images, self.image_shape)
        settings = check_eval({**self.eval, **(eval or {})})
        if settings["tta"] == "train_transforms" and not self.augment.cfg:
            raise InputError("tta train_transforms: this checkpoint predates the augment config it would draw from")
        generator = torch.Generator(device=self.device).manual_seed(DRAW_SEED)
        out = [self._batch(images[start:start + batch_size], settings, generator)
               for start in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def _batch(self, images: torch.Tensor, settings: dict, generator: torch.Generator) -> torch.Tensor:
        views = self.augment.views(images.to(self.device), settings["tta"], settings["views"], generator)
        return torch.stack([torch.softmax(self.model(v).float(), dim=1) for v in views]).mean(0).cpu()

    def labels(self, probabilities: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in probabilities.argmax(1).tolist()]


def check_images(images: torch.Tensor | np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """The batch as a uint8 tensor, or InputError naming the shape and dtype the network takes."""
    h, w, c = shape
    want = f"uint8 images of shape (N, {h}, {w}, {c}) (height, width, RGB channels; pixel values 0-255)"
    dtype = getattr(images, "dtype", None)
    if str(dtype).removeprefix("torch.") != "uint8":
        raise InputError(f"expected {want}; got dtype {dtype}. Send the decoded image bytes, not floats: "
                         "scaling and normalisation happen inside the model")
    got = tuple(images.shape)
    if len(got) != 4 or got[1:] != (h, w, c):
        raise InputError(f"expected {want}; got shape {got}. Resize to {h}x{w} and promote greyscale to "
                         "3 channels, as `runner data prepare` does")
    return torch.as_tensor(images)


def image_shape(state: dict) -> tuple[int, int, int]:
    """(H, W, C) of the images a checkpoint's network was trained on."""
    shape = state.get("image_shape")
    if shape is None:
        return LEGACY_SIZE, LEGACY_SIZE, len(state["mean"])
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def eval_settings(state: dict) -> dict:
    """The trial's own `eval` group (tta, views); no test-time augmentation for checkpoints older than it."""
    return {**NO_TTA, **((state.get("config") or {}).get("eval") or {})}


def check_eval(settings: Mapping[str, Any]) -> dict:
    """`{"tta", "views"}` as `Augment.views` takes them, or InputError naming the allowed values (a
    served model's caller may send anything; specs and the command line were checked by the schema)."""
    tta, views = settings.get("tta"), settings.get("views")
    if tta not in TTA_MODES:
        raise InputError(f"tta must be one of {', '.join(TTA_MODES)}; got {tta!r}")
    if isinstance(views, bool) or not isinstance(views, int | np.integer) or views < 1:
        raise InputError(f"views must be a whole number >= 1; got {views!r}")
    if tta == "none" and views != 1:
        raise InputError(f"{views} views need tta flips or train_transforms (none scores the image once)")
    if tta == "flips" and not 2 <= views <= MAX_TTA_VIEWS:
        raise InputError(f"tta flips takes 2..{MAX_TTA_VIEWS} views, got {views}")
    return {"tta": tta, "views": int(views)}
