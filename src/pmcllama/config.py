"""Typed configuration: YAML -> pydantic model, `a.b=value` overrides, helpful errors.

Every stage declares its config as a `Config` subclass whose fields carry a one-line
description. `load_config` reads an optional YAML file, applies `key.sub=value` overrides
(values parsed as YAML, so `lr=2e-5`, `targets=[q_proj,v_proj]` and `lora=null` work) and
validates. An unknown key is an error naming the nearest valid key; a wrong type names the
field and the value.
"""
from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pmcllama.errors import ConfigError, UserError
from pmcllama.inputs import read_text

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base class of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def require_unique_names(items: list, what: str) -> None:
    """Raise ValueError naming the repeated `.name`s of config items (sources, benchmarks)."""
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside an annotation (X, X | None, list[X]) and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple) and args:
        inner, _ = _model_in(args[0])
        return inner, True
    if origin in (Union, types.UnionType):
        for arg in args:
            inner, is_list = _model_in(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def field_paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """All dotted key paths of a config class, nested sections included."""
    paths = []
    for name, field in cls.model_fields.items():
        path = prefix + name
        paths.append(path)
        inner, _ = _model_in(field.annotation)
        if inner is not None:
            paths.extend(field_paths(inner, path + "."))
    return paths


def _nearest(cls: type[BaseModel], key: str, prefix: str, root: type[BaseModel]) -> str | None:
    """The valid key an unknown one most likely meant: the same name inside a section here
    (`warmup_steps` -> `optimizer.warmup_steps`), a similar name here, or a similar path anywhere."""
    below = [p for p in field_paths(cls) if p.endswith("." + key)]
    if below:
        return prefix + below[0]
    near = difflib.get_close_matches(key, list(cls.model_fields), n=1, cutoff=0.5)
    if near:
        return prefix + near[0]
    near = difflib.get_close_matches(prefix + key, field_paths(root), n=1, cutoff=0.6)
    return near[0] if near else None


def _check_keys(cls: type[BaseModel], data: Any, prefix: str, root: type[BaseModel]) -> None:
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if key not in cls.model_fields:
            valid = list(cls.model_fields)
            near = _nearest(cls, str(key), prefix, root)
            hint = f"; did you mean '{near}'?" if near else ""
            raise ConfigError(
                f"unknown config key '{prefix}{key}'{hint} (valid here: {', '.join(valid)})"
            )
        inner, is_list = _model_in(cls.model_fields[key].annotation)
        if inner is None:
            continue
        if is_list and isinstance(value, list):
            for i, item in enumerate(value):
                _check_keys(inner, item, f"{prefix}{key}[{i}].", root)
        else:
            _check_keys(inner, value, f"{prefix}{key}.", root)


def _format_validation_error(err: ValidationError, data: dict) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"])
        loc = loc.replace(".[", "[")
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if not loc:  # a check across fields (model validator)
            lines.append(str(e["msg"]).removeprefix("Value error, "))
        elif e["type"] == "missing":
            lines.append(f"config key '{loc}' is required")
        else:
            lines.append(f"config key '{loc}' = {shown}: {e['msg']}")
    return "; ".join(lines)


def set_key(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating sections; `a.b[1].c` indexes lists."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        name, index = part, None
        if part.endswith("]") and "[" in part:
            name, idx = part[:-1].split("[", 1)
            index = int(idx)
        if index is None:
            if last:
                node[name] = value
            else:
                if not isinstance(node.get(name), dict):
                    node[name] = {}
                node = node[name]
        else:
            seq = node.get(name)
            if not isinstance(seq, list) or index >= len(seq):
                raise ConfigError(f"override '{dotted}': '{name}' has no item {index}")
            if last:
                seq[index] = value
            else:
                node = seq[index]


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key.strip(), value))
    return pairs


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    text = read_text(path, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise UserError(f"invalid YAML: {getattr(e, 'problem', e)}", path, line) from None
    if data is None:
        raise UserError("config file is empty (no key: value in it)", path)
    if not isinstance(data, dict):
        raise UserError("a config file must be a YAML mapping of key: value", path)
    return data


def build_config(cls: type[C], data: dict, overrides: list[str] | None = None, source: str = "") -> C:
    data = dict(data)
    for key, value in parse_overrides(overrides):
        set_key(data, key, value)
    where = f"{source}: " if source else ""
    try:
        _check_keys(cls, data, "", cls)
        return cls.model_validate(data)
    except ConfigError as e:
        raise ConfigError(where + str(e)) from None
    except ValidationError as e:
        raise ConfigError(where + _format_validation_error(e, data)) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> C:
    """Read a YAML file (optional; only its `section` mapping if given, dotted for a nested one:
    `ablation.finetune`) plus overrides into a validated `cls`."""
    data = read_yaml(path) if path else {}
    if section is not None:
        if not path:
            raise UserError("--section needs --config FILE.yaml")
        for part in section.split("."):  # a dotted section: a mapping inside a mapping
            if not isinstance(data.get(part), dict):
                raise UserError(f"no section '{section}' (a mapping) in the config file; its sections: "
                                f"{', '.join(k for k, v in data.items() if isinstance(v, dict)) or 'none'}", path)
            data = data[part]
    source = f"{path} [{section}]" if section else str(path) if path else ""
    return build_config(cls, data, overrides, source=source)


def describe(cls: type[BaseModel], prefix: str = "", omit: frozenset[str] = frozenset()) -> list[str]:
    """One line per config key: `key (type, default): description`, for --help; the dotted
    keys in `omit` (and below them) are left out."""
    lines = []
    for name, field in cls.model_fields.items():
        if prefix + name in omit:
            continue
        inner, is_list = _model_in(field.annotation)
        tname = _type_name(field.annotation)
        default = "" if field.is_required() else f" = {field.get_default(call_default_factory=True)!r}"
        if inner is not None and not is_list and not field.is_required() and field.default is not None:
            default = ""
        lines.append(f"{prefix}{name} ({tname}{default}): {field.description or ''}".rstrip())
        if inner is not None:
            lines.extend(describe(inner, prefix + name + ("[]." if is_list else "."), omit))
    return lines


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    text = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)  # pmcllama.training.config.LoraConfig -> LoraConfig
    text = re.sub(r"Literal\[([^\]]*)\]", lambda m: m.group(1).replace("'", "").replace(", ", "|"), text)
    return re.sub(r"Optional\[(.*)\]$", r"\1 | None", text)


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
