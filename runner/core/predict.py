"""Predictions from a trained network: raw uint8 images in, class probabilities out. Plain PyTorch.

The one predict path. `runner submit` with a checkpoint, the registered MLflow model
(`runner.tracking.pyfunc`, which `runner submit` and `mlflow models serve` load) all call
`Predictor.probabilities`: check the batch, scale to [0, 1], normalise with the training split's
per-channel statistics, NHWC -> NCHW, run the network on each test-time view and average the softmax.

    predictor = Predictor.from_state(checkpoint.load("ckpt/"), device="cpu")
    probs = predictor.probabilities(images)          # uint8 [N, H, W, 3] at the training size
    labels = [predictor.classes[i] for i in probs.argmax(1)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from runner.core import augment, checkpoint

BATCH = 256
LEGACY_SIZE = 32  # checkpoints written before `image_shape` was recorded were all 32x32


class InputError(ValueError):
    """Images the network cannot take: wrong dtype, rank or size. The message names the expected ones."""


@dataclass
class Predictor:
    model: torch.nn.Module  # in eval mode, on `device`
    classes: list[str]
    mean: list[float]  # per channel, in [0, 1] units: the training split's statistics
    std: list[float]
    image_shape: tuple[int, int, int]  # (H, W, C) the network was trained at
    tta: int = 1  # test-time views (1: none), the trial's own setting unless a caller overrides it
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> Predictor:
        """From a checkpoint dict (see runner.core.checkpoint), on `device`."""
        device = torch.device(device)
        return cls(model=checkpoint.build_model(state).to(device), classes=list(state["classes"]),
                   mean=list(state["mean"]), std=list(state["std"]), image_shape=image_shape(state),
                   tta=eval_views(state), device=device)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor | np.ndarray, tta: int | None = None,
                      batch_size: int = BATCH) -> torch.Tensor:
        """Softmax probabilities [N, classes] (float32, on the CPU), averaged over `tta` views
        (default: the predictor's own setting)."""
        images = check_images(images, self.image_shape)
        views = self.tta if tta is None else tta
        out = [self._batch(images[start:start + batch_size], views) for start in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def _batch(self, images: torch.Tensor, views: int) -> torch.Tensor:
        x = augment.to_float(images.to(self.device), self.mean, self.std, channels_last=False)
        probs = [torch.softmax(self.model(v).float(), dim=1) for v in augment.tta_views(x, views)]
        return torch.stack(probs).mean(0).cpu()

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


def eval_views(state: dict) -> int:
    """The trial's own test-time augmentation: 1 view (none) unless its config says otherwise."""
    return int(((state.get("config") or {}).get("eval") or {}).get("views", 1))
