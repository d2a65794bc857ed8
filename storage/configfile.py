"""Load a YAML/JSON config file into a pydantic model, validated at the edge.

Every job has one config model with `model_config = ConfigDict(extra="forbid")`; `load_config` turns any
problem into a one-line GadmsError naming the file and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from storage.errors import GadmsError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(GadmsError):
    pass


def describe_validation_error(source: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: field {field!r}: {first['msg']}{more}"


def validate_config(data: Any, model: type[ModelT], source: str = "config") -> ModelT:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(source, exc)) from None


def load_config(path: str | Path, model: type[ModelT], overrides: dict | None = None) -> ModelT:
    """Read `path` (YAML or JSON) with yaml.safe_load (no object tags), merge `overrides`, validate. An error in a
    field that `overrides` set is the command line's, not the file's."""
    data = read_config_data(path)
    overrides = overrides or {}
    data.update(overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        source = "command line" if loc and loc[0] in overrides else str(path)
        raise ConfigError(describe_validation_error(source, exc)) from None


def read_config_data(path: str | Path) -> dict:
    """The mapping in a YAML or JSON config file, not yet validated (yaml.safe_load: no object tags)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data or {})


def dump_config(config: BaseModel, path: str | Path) -> None:
    """Save the validated config beside a run's outputs (JSON-compatible YAML)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
