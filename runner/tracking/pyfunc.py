"""The trained network as an MLflow model: raw uint8 images in, class names and probabilities out.

A pyfunc "model from code", so loading it unpickles nothing: the model folder holds `state.pt` (weights,
class names, the training split's mean/std, the image shape and the trial's config; tensors and plain
values only, read with `torch.load(weights_only=True)`), a copy of the runner's own code (`code/`, so
the model runs where this checkout is absent), and a three-line script that MLflow runs at load time to
build `ImageClassifier`. Input: uint8 `(N, H, W, 3)` at the training size. Output: a table with `label`
(the class name) and one `prob_<class>` column per class. Predict parameters `tta` (none | flips |
train_transforms) and `views` (K): test-time augmentation, by default the trial's own `eval` group.
All the arithmetic is `runner.core.predict`, the one predict path.

    mlflow models serve -m models:/smoke@champion --env-manager local --host 127.0.0.1 --port 5001
    curl 127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d '{"inputs": [[[[0, 0, 0], ...]]]}'
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from runner.core import checkpoint
from runner.core.predict import Predictor, check_images, eval_settings, image_shape

MODEL_NAME = "model"  # a trial's logged model; the registry names the chosen one
MODEL_TYPE = "image-classifier"
LABEL = "label"
PROB_PREFIX = "prob_"
# Given, so MLflow skips its requirement inference (seconds per model); pinned to what trained it.
REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "pandas")
CODE_PACKAGES = ("runner", "models")  # copied into the model: what the loader script imports
_LOADER = ("# Run by MLflow when the model is loaded: builds the classifier (nothing is unpickled).\n"
           "from mlflow.models import set_model\n\n"
           "from runner.tracking.pyfunc import ImageClassifier\n\n"
           "set_model(ImageClassifier())\n")


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        config = context.model_config or {}
        device = config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.predictor = Predictor.from_state(checkpoint.load(context.artifacts["checkpoint"]), device)

    # MLflow 3 reads `model_input`'s annotation: np.ndarray is one it passes through unconverted.
    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        settings = {k: v for k, v in (params or {}).items() if k in ("tta", "views") and v is not None}
        images = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
        return table(self.predictor.classes, self.predictor.probabilities(images, settings))


def table(classes: list[str], probabilities: torch.Tensor) -> pd.DataFrame:
    """The model's answer: `label` (predicted class name), then `prob_<class>` per class."""
    frame = pd.DataFrame(probabilities.double().numpy(), columns=[PROB_PREFIX + c for c in classes])
    frame.insert(0, LABEL, [classes[i] for i in probabilities.argmax(1).tolist()] if len(frame) else [])
    return frame


def probabilities_of(frame: pd.DataFrame, classes: list[str]) -> torch.Tensor:
    """The probability columns of the model's answer, as [N, classes] in class order."""
    return torch.tensor(frame[[PROB_PREFIX + c for c in classes]].to_numpy(), dtype=torch.float32)


def signature(state: Mapping[str, Any]) -> ModelSignature:
    h, w, c = image_shape(state)
    outputs = Schema([ColSpec("string", LABEL)] + [ColSpec("double", PROB_PREFIX + k) for k in state["classes"]])
    own = eval_settings(state)
    params = ParamSchema([ParamSpec("tta", "string", own["tta"]), ParamSpec("views", "long", own["views"])])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w, c))]), outputs=outputs,
                          params=params)


def input_example(state: Mapping[str, Any]) -> np.ndarray:
    """Two images (batch 2: the shape stays (-1, H, W, 3)); a fixed pattern, so no data set is needed."""
    h, w, c = image_shape(state)
    return np.random.default_rng(0).integers(0, 256, size=(2, h, w, c), dtype=np.uint8)


def save(state: Mapping[str, Any], path: str | Path, *, run_id: str | None = None, model_id: str | None = None,
         metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the MLflow model folder for a checkpoint dict at `path` (must not exist yet)."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="runner-model-") as tmp:
        weights = checkpoint.save(checkpoint.for_inference(state), Path(tmp) / "weights")
        loader = Path(tmp) / "loader.py"
        loader.write_text(_LOADER)
        meta = {"classes": list(state["classes"]), "mean": list(state["mean"]), "std": list(state["std"]),
                "image_shape": list(image_shape(state)), **(metadata or {})}
        with _quiet():
            mlflow.pyfunc.save_model(
                path, python_model=str(loader), artifacts={"checkpoint": str(weights)},
                code_paths=_stage_code(Path(tmp) / "code"), signature=signature(state),
                input_example=input_example(state), pip_requirements=_requirements(), metadata=meta,
                mlflow_model=Model(run_id=run_id, model_id=model_id, model_uuid=model_id))
    return path


def log(client: MlflowClient, experiment_id: str, run_id: str, state: Mapping[str, Any], *, step: int,
        params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None) -> str:
    """The checkpoint as an MLflow 3 logged model of `run_id` (its output at `step`); returns the model id.
    Through the client, not the fluent API, so it writes to the client's store whatever is global."""
    model = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id, model_type=MODEL_TYPE,
                                       params=dict(params or {}), tags=dict(tags or {}))
    try:
        with tempfile.TemporaryDirectory(prefix="runner-model-") as tmp:
            folder = save(state, Path(tmp) / "model", run_id=run_id, model_id=model.model_id,
                          metadata={"trial_run_id": run_id})
            client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    return model.model_id


class LoadedModel:
    """A logged/registered model loaded through MLflow, as `runner submit` uses it: the same
    `predict` call `mlflow models serve` makes, its table turned back into probabilities."""

    def __init__(self, uri: str, device: str | torch.device | None = None) -> None:
        config = {"device": str(device)} if device is not None else None
        self.uri = uri
        self.model = mlflow.pyfunc.load_model(uri, model_config=config)
        meta = self.model.metadata.metadata or {}
        if "classes" not in meta or "image_shape" not in meta:
            raise MlflowException(f"model {uri!r} was not logged by this runner (no class names or image shape "
                                  "in its metadata)")
        self.classes: list[str] = list(meta["classes"])
        self.image_shape = tuple(meta["image_shape"])
        self.run_id: str | None = self.model.metadata.run_id

    def probabilities(self, images: torch.Tensor | np.ndarray, eval: Mapping[str, Any] | None = None) -> torch.Tensor:
        """As `Predictor.probabilities`; `eval` ({"tta", "views"}) overrides the trial's own setting."""
        images = check_images(images, self.image_shape)  # our message, before MLflow's (which dumps the data)
        frame = self.model.predict(images.numpy(), params=dict(eval) if eval else None)
        return probabilities_of(frame, self.classes)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Per trial, MLflow would print an INFO line ("Validating input example"): noise in the grid's
    progress output."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _stage_code(target: Path) -> list[str]:
    """The runner's and the model zoo's Python files (no caches, tests or data): ~0.25 MB."""
    here = Path(__file__).resolve().parents[2]
    paths = []
    for package in CODE_PACKAGES:
        shutil.copytree(here / package, target / package, ignore=_not_python)
        paths.append(str(target / package))
    return paths


def _not_python(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir() or n == "__pycache__"]


def _requirements() -> list[str]:
    pinned = []
    for package in REQUIREMENTS:
        try:
            pinned.append(f"{package}=={importlib.metadata.version(package).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(package)
    return pinned
