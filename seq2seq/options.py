"""Options from text: YAML files and ``section.option=value`` overrides set typed dataclass
fields, each value converted to its field's annotated type, and every mistake (an unknown key,
with the closest known one; a value of the wrong type; a file that is not a mapping) is one
:class:`ConfigError` line naming the option or the file. :mod:`seq2seq.config` holds the options.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration option is unknown or has a bad value."""


def choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}")


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to the field's annotated type, or raise ConfigError naming ``name``."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, vars(typing), {})  # annotations are strings under `from __future__`
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(name, value, inner[0])
    try:
        if origin is tuple:
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                raise ValueError
            return tuple(coerce(name, v, a) for v, a in zip(value, args))
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{name}={value!r} is not a valid {getattr(hint, '__name__', hint)}")


def update_fields(obj: Any, values: dict[str, Any], prefix: str) -> None:
    """Set the fields of dataclass ``obj`` (nested sections too) from ``values``, named ``prefix`` + key."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown option '{name}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{name}' is a section; give it a mapping, not {value!r}")
            update_fields(current, value, f"{name}.")
        else:
            setattr(obj, key, coerce(name, value, fields[key].type))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "model.attention=none"]`` into a nested dict."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form section.option=value")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, through libyaml's parser where PyYAML has it: ten times faster, and a
    study reads every run's saved config each time it looks at its runs."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty one); a one-line ConfigError otherwise."""
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold {expected}")
    return loaded
