"""The model registry: builder functions stored by name, plus the checks shared by `build` and `validate`.

Reads nothing and writes nothing. A family module decorates one builder per variant with
`@register_model(check=...)`; importing `models` imports every family, which fills `_MODELS`.
`validate` runs the family's check (the spec schema calls it: the one config boundary); `build` trusts
its input.
A builder has the shape `def name(num_classes: int, *, kw=default, ...) -> nn.Module`; its keyword
defaults are the model's documented parameters (`model_params`), so spec validation and the `runner
models` listing read them from the signature instead of keeping a second copy.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]
Check = Callable[..., None]

# The one module-level registry, filled only by importing the family modules (never written afterwards).
_MODELS: dict[str, Builder] = {}
_CHECKS: dict[str, Check] = {}


class ModelConfigError(ValueError):
    """A model name, keyword or value that no registered builder accepts; the message says what would."""


def register_model(fn: Builder | None = None, *, check: Check | None = None) -> Any:
    """Store `fn` under its `__name__`; `check(**kwargs)` (all keywords, defaults filled) vets values.

    Usable bare (`@register_model`) or with a value check (`@register_model(check=_check_wrn)`).
    A duplicate name warns and replaces, as timm does, so a notebook can re-run a cell.
    """

    def add(builder: Builder) -> Builder:
        name = builder.__name__
        params = list(inspect.signature(builder).parameters.values())[1:]
        loose = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is p.empty]
        if loose:
            # model_params() reads the defaults from the signature; a parameter it cannot see would
            # escape spec validation.
            raise TypeError(f"builder {name!r}: parameters after num_classes must be keyword-only "
                            f"with defaults, not {loose}")
        if name in _MODELS:
            warnings.warn(f"model {name!r} registered twice; the later builder wins", stacklevel=3)
        _MODELS[name] = builder
        if check is not None:
            _CHECKS[name] = check
        else:
            _CHECKS.pop(name, None)
        return builder

    return add if fn is None else add(fn)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def model_params(name: str) -> dict[str, Any]:
    """The builder's keyword parameters and their defaults (everything but `num_classes`)."""
    builder = _builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def validate(name: str, kwargs: Mapping[str, Any]) -> None:
    """The one check of a model config (the spec schema calls it): name, keywords, value types and ranges."""
    _checked_kwargs(name, kwargs)


def build(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build model `name` with `num_classes` outputs; keywords left out take the builder's defaults.

    Does not check the values again: configs reach it through the spec schema, which ran `validate`."""
    return _builder(name)(num_classes, **kwargs)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (works on meta-device models: it only reads shapes)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _builder(name: str) -> Builder:
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelConfigError(f"unknown model {name!r}{hint}; registered models: {', '.join(list_models())}")
    return _MODELS[name]


def _allowed(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(none)"


def _checked_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return the builder's defaults overlaid with `kwargs`, after refusing anything the builder would not take."""
    params = model_params(name)
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(str(key), list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelConfigError(f"model {name!r} has no parameter {key!r}{hint}; "
                                   f"allowed (with defaults): {_allowed(params)}")
    full = {**params, **kwargs}
    for key, value in kwargs.items():
        _check_type(name, key, value, params[key])
    check = _CHECKS.get(name)
    if check is not None:
        try:
            check(**full)
        except ModelConfigError as err:  # family checks don't know which registered name they serve
            raise ModelConfigError(f"model {name!r}: {err}") from None
    return full


def _check_type(name: str, key: str, value: Any, default: Any) -> None:
    # Types follow the default's: an int parameter refuses 4.0 and True rather than coercing them
    # silently (a typo must not train another model); a float parameter accepts ints (1 -> 1.0).
    if isinstance(value, bool) and not isinstance(default, bool):
        ok = False
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ModelConfigError(f"model {name!r}: {key} must be {type(default).__name__} "
                               f"(default {default!r}), got {value!r} ({type(value).__name__})")
