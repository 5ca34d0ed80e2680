"""The trial config schema: every field of a resolved trial, its type, default and allowed range.

Pydantic models, strict (no silent int/float/bool coercion; a float field takes an int and stores a
float) and closed (an unknown key is refused). `validate(cfg, file, row)` fills the defaults and
refuses a bad value with the file, row and dotted field named (runner/spec/messages.py words the
error); `runner/spec/load.py` feeds it the rows it resolves from YAML, `runner train` the command
line's values. Defaults live here and nowhere else, and nothing downstream checks a config again.

Adding a field is one line in its group's class: `name: type = Field(default, ge=..., description=...)`.
`runner schema` exports the JSON Schema an editor uses to complete and check spec files.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)

import models
from runner.core.augment import MAX_TTA_VIEWS
from runner.core.optim import FUSED, OPTIMIZERS
from runner.core.schedule import INTERVALS, SCHEDULES
from runner.spec.messages import SpecError, spec_error

__all__ = ["SpecError", "TrialConfig", "default_config", "validate"]


class Group(BaseModel):
    """A config group: strict, closed to unknown keys, finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _increasing(what: str) -> AfterValidator:
    def check(values: list) -> list:
        if sorted(values) != list(values):
            raise ValueError(f"must be increasing {what}")
        return values
    return AfterValidator(check)


def _gpus(value: Any) -> float | str:
    """"auto" (resolved from the cluster at run time) or a count; fractions pack trials onto one GPU."""
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError('must be "auto" or a number >= 0')
    if value > 1 and value % 1:
        raise ValueError("above 1, GPUs per worker must be whole")
    return float(value)


Fractions = Annotated[list[Annotated[float, Field(gt=0, lt=1)]],
                      _increasing("fractions in (0, 1), e.g. [0.3, 0.5, 0.7, 0.9]")]
Milestones = Annotated[list[Annotated[int, Field(ge=1)]], _increasing("epoch numbers >= 1, e.g. [43, 45, 47]")]
Betas = Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)]
Gpus = Annotated[float | str, PlainValidator(_gpus),
                 WithJsonSchema({"anyOf": [{"const": "auto"}, {"type": "number", "minimum": 0}]})]


class Data(Group):
    path: str = "synthetic"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    num_classes: int | None = Field(None, ge=2, description="only when meta.json cannot be read")


class Optimizer(Group):
    name: Literal[OPTIMIZERS] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: Betas = [0.9, 0.999]
    sam_rho: float = Field(0.0, ge=0, description="0 = plain optimizer, > 0 = SAM around it")
    sam_adaptive: bool = False
    clip_grad_norm: float = Field(0.0, ge=0, description="max L2 norm of the gradient per step; 0 = off")


class Schedule(Group):
    name: Literal[SCHEDULES] = "constant"
    gamma: float = Field(0.2, gt=0, le=1)
    fractions: Fractions = [0.3, 0.5, 0.7, 0.9]
    milestones: Milestones = []
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=0)
    factor: float = Field(0.2, gt=0, lt=1)
    cycle_epochs: int = Field(4, ge=2)
    max_lr: float | None = Field(None, gt=0)
    interval: Literal[INTERVALS] = Field("epoch", description="the lr moves per epoch or per step (batch)")


class Augment(Group):
    crop_padding: int = Field(4, ge=0, le=16)
    hflip: bool = True
    vflip: bool = False
    rotate_deg: float = Field(0.0, ge=0, le=180)
    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=1)
    saturation: float = Field(0.0, ge=0, le=1)
    cutout: int = Field(0, ge=0, le=32, description="side of the square, pixels; 0 = off")
    mixup_alpha: float = Field(0.0, ge=0, description="MixUp: lambda ~ Beta(a, a) per sample; 0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix: box area ~ Beta(a, a) per sample; 0 = off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="chance a sample is mixed, when an alpha > 0")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="CutMix instead of MixUp, when both are on")


class Train(Group):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="global: split over the DDP workers")
    seed: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    compile: bool = False
    channels_last: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="fp16: with a GradScaler")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the weights (evaluated, saved); 0 = off")
    sync_bn: bool = Field(False, description="SyncBatchNorm across DDP workers (GPU workers only)")


class Budget(Group):
    max_params: int = Field(5_000_000, ge=1)
    mode: Literal["enforce", "flag"] = "enforce"


class Scaling(Group):
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: Gpus = Field("auto", description='"auto": 1 where the cluster has GPUs, else 0')
    trial_cpus: float = Field(1.0, gt=0, description="the trial driver's own bundle")
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class Eval(Group):
    """How validation (and, unless the command line says otherwise, the registered model and `runner
    submit`) scores an image: the softmax averaged over `views` views of it."""

    tta: Literal["none", "flips", "train_transforms"] = Field(
        "none", description="none: the image once; flips: itself, its mirror, then 2-pixel shifts; "
                            "train_transforms: draws of the trial's own train augmentation (the report's E6)")
    views: int = Field(1, ge=1, description="views averaged per image: 1 with tta none; 2..10 with flips")


class Checkpoint(Group):
    keep: int = Field(2, ge=1, description="best N by val accuracy are kept, plus the latest")


def _family_check(self: Group) -> Group:
    """The model family's own value check (e.g. WRN depth 6n+4), registered with its builder."""
    kwargs = self.model_dump()
    models.validate(kwargs.pop("name"), kwargs)
    return self


def _model_class(name: str) -> type[Group]:
    """One group per registered model: `name` plus the builder's keywords, typed by their defaults."""
    params = {key: (type(default) if default is not None else Any, default)
              for key, default in models.model_params(name).items()}
    return create_model(f"Model_{name}", __base__=Group, name=(Literal[name], name),
                        __validators__={"family": model_validator(mode="after")(_family_check)}, **params)


MODEL_CLASSES: dict[str, type[Group]] = {name: _model_class(name) for name in models.list_models()}
DEFAULT_MODEL = "wrn"
ModelArgs = Annotated[Union[tuple(MODEL_CLASSES.values())], Field(discriminator="name")]  # noqa: UP007


class TrialConfig(Group):
    """A whole resolved trial: every group, each field filled."""

    data: Data = Field(default_factory=Data)
    model: ModelArgs = Field(default_factory=MODEL_CLASSES[DEFAULT_MODEL])
    optimizer: Optimizer = Field(default_factory=Optimizer)
    schedule: Schedule = Field(default_factory=Schedule)
    augment: Augment = Field(default_factory=Augment)
    train: Train = Field(default_factory=Train)
    budget: Budget = Field(default_factory=Budget)
    scaling: Scaling = Field(default_factory=Scaling)
    eval: Eval = Field(default_factory=Eval)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    max_failures: int = Field(0, ge=-1, description="-1 = retry forever")


def default_config() -> dict:
    """Every field at its default (the model group at the default model's builder defaults)."""
    return TrialConfig().model_dump()


def validate(cfg: dict, file: str, row: str | None = None) -> dict:
    """Fill defaults and check every field; returns a new, complete config of plain values."""
    try:
        out = TrialConfig.model_validate(cfg).model_dump()
    except ValidationError as err:
        raise spec_error(err, TrialConfig, file, row) from None
    _check_cross_fields(out, file, row)
    return out


def _check_cross_fields(cfg: dict, file: str, row: str | None) -> None:
    """Rules over two fields, possibly in two groups: named at the field the fix belongs to."""
    epochs, warmup = cfg["train"]["epochs"], cfg["schedule"]["warmup_epochs"]
    if 0 < warmup and warmup >= epochs:
        raise SpecError(file, f"warmup ({warmup}) must be shorter than train.epochs ({epochs})", row=row,
                        field="schedule.warmup_epochs")
    tta, views = cfg["eval"]["tta"], cfg["eval"]["views"]
    if tta == "none" and views > 1:
        raise SpecError(file, f"{views} views need eval.tta flips or train_transforms (none scores the plain "
                              "image once)", row=row, field="eval.views")
    if tta == "flips" and not 2 <= views <= MAX_TTA_VIEWS:
        raise SpecError(file, f"flips takes 2..{MAX_TTA_VIEWS} views (the image, its mirror, then 2-pixel "
                              f"shifts of each), got {views}", row=row, field="eval.views")
    if cfg["schedule"]["name"] == "milestones" and not cfg["schedule"]["milestones"]:
        raise SpecError(file, "schedule `milestones` needs a list, e.g. [43, 45, 47]", row=row,
                        field="schedule.milestones")
    _check_recipes(cfg, file, row)


def _check_recipes(cfg: dict, file: str, row: str | None) -> None:
    """The training recipes that cannot run in some combination, refused before anything is spent."""
    optimizer, train = cfg["optimizer"], cfg["train"]
    if train["precision"] == "fp16" and (optimizer["name"] not in FUSED or optimizer["sam_rho"] > 0):
        raise SpecError(file, f"fp16 needs optimizer.name {' | '.join(FUSED)} without SAM (their fused kernels "
                              "skip an overflowing step on the device; others would read the overflow flag back to "
                              "the host every step); use bf16 or fp32 here", row=row, field="train.precision")
    if cfg["schedule"]["name"] == "plateau" and cfg["schedule"]["interval"] == "step":
        raise SpecError(file, "plateau reads the val accuracy once per epoch: use interval: epoch", row=row,
                        field="schedule.interval")
    if train["sync_bn"] and cfg["scaling"]["workers"] > 1 and cfg["scaling"]["gpus_per_worker"] == 0:
        raise SpecError(file, "torch's SyncBatchNorm runs on GPUs only and these DDP workers have none; set "
                              "train.sync_bn: false or give the workers GPUs", row=row, field="train.sync_bn")
