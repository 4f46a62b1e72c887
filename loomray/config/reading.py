"""Reading a configuration: presets and YAML files (with their ``base`` chain),
``section.key=value`` overrides, and their values coerced to the fields' types."""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from loomray.config.checks import check_applicable, validate
from loomray.config.schema import Config, ConfigError


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files("loomray.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def _read_yaml(source: str) -> dict[str, Any]:
    """The raw config of a preset or YAML file, its ``base`` chain applied."""
    path = Path(source)
    preset = source in preset_names()
    if preset:
        text = resources.files("loomray.presets").joinpath(f"{source}.yaml").read_text()
        origin = f"preset {source}"
    elif path.suffix in (".yaml", ".yml") or path.exists():
        text, origin = read_text_file(path, "config file", ConfigError), str(path)
    else:
        raise ConfigError(
            f"unknown preset {source!r}; presets are {', '.join(preset_names())}, "
            "or pass a path to a YAML file"
        )
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin} is not valid YAML: {yaml_problem(err)}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a mapping of sections, not {type(raw).__name__}")
    raw.setdefault("name", source if preset else path.stem)
    base = raw.pop("base", None)
    if base is not None:
        raw = _merge(_read_yaml(str(base)), raw)
    return raw


def flatten_dotted(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``."""
    out = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_dotted(v, key + "."))
        else:
            out[key] = v
    return out


def read_text_file(path: Path, what: str, error: type[ValueError]) -> str:
    """The text of a file the user named, or ``error`` with one sentence saying why not."""
    from loomray.paths import PathError, file_to_read

    try:
        return file_to_read(path, what).read_text()
    except PathError as err:
        raise error(str(err)) from err
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not a text file") from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in words with its line and column (not PyYAML's "<unicode string>")."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    if problem.startswith("could not determine a constructor for the tag"):
        tag = problem.split("tag:yaml.org,2002:")[-1].strip("'")
        problem = f"the tag {tag} is not allowed (plain YAML only)"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.channel_mult=1,2"]`` -> nested dict of raw values."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        if not set_dotted(out, key.strip(), parsed):
            raise ConfigError(f"override {item!r} conflicts with another override")
    return out


def set_dotted(out: dict[str, Any], key: str, value: Any) -> bool:
    """``set_dotted(d, "train.lr", 1e-4)`` sets ``d["train"]["lr"]``; False on a clash."""
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            return False
    node[leaf] = value
    return True


def load_config_values(
    source: str, values: dict[str, Any], unchecked: frozenset[str] = frozenset()
) -> Config:
    """A preset or YAML path with already-typed dotted values applied (sweeps use this).

    Every value must act for the resulting config (``check_applicable``) except the
    ``unchecked`` keys (a sweep's searched keys, whose values come in combinations)."""
    raw = _read_yaml(source)
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if (
            not key
            or any(not part for part in key.split("."))
            or not set_dotted(nested, key, value)
        ):
            raise ConfigError(f"config key {key!r} is not of the form section.key")
    return check_applicable(config_from_dict(_merge(raw, nested)), set(values) - unchecked)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        if isinstance(items, (list, tuple)):
            item_hint = args[0]
            return tuple(
                _coerce(
                    yaml.safe_load(i) if isinstance(i, str) and item_hint is not str else i,
                    item_hint,
                    key,
                )
                for i in items
            )
    name = getattr(hint, "__name__", str(hint))
    if value is None:
        raise ConfigError(f"{key} needs a value ({key}=<{name}>), got none")
    raise ConfigError(f"{key} must be {name}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; {prefix or 'config'} has "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (missing keys take defaults)."""
    return validate(_build(Config, raw, ""))


def load_config(source: str, overrides: list[str] | None = None) -> Config:
    """A preset name or YAML path, with ``section.key=value`` overrides applied."""
    extra = parse_overrides(overrides or [])
    cfg = config_from_dict(_merge(_read_yaml(source), extra))
    return check_applicable(cfg, set(flatten_dotted(extra)))
