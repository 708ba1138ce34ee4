"""Colon paths into nested YAML data (``optimizer:learning_rate``, ``layers:0:units``), and the
``--set KEY:PATH=VALUE`` overrides that use them.

List items are addressed by index. Overrides never add keys to the model config: a path that
is not there is an error, not a silent no-op.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import yaml

from hyper_opt.exceptions import ConfigError
from hyper_opt.schema import HYPER_SECTIONS


def _step(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        if part in node:
            return node[part]
        # YAML keys may be ints or bools; a colon path is always text.
        for key in node:
            if str(key) == part:
                return node[key]
        raise KeyError(part)
    if isinstance(node, list):
        return node[_index(part, len(node))]
    raise TypeError(f"cannot step into {type(node).__name__} with {part!r}")


def _index(part: str, length: int) -> int:
    index = int(part)  # ValueError -> not a list index
    if not -length <= index < length:
        raise IndexError(part)
    return index


def get_path(config: Any, path: Sequence[str]) -> Any:
    """The value at ``path``; KeyError/IndexError/TypeError/ValueError when it is not there."""
    node = config
    for part in path:
        node = _step(node, part)
    return node


def has_path(config: Any, path: Sequence[str]) -> bool:
    try:
        get_path(config, path)
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return True


def set_path(config: Any, path: Sequence[str], value: Any) -> None:
    """Set an existing path in place (the path must exist: see :func:`has_path`)."""
    parent = get_path(config, path[:-1])
    last = path[-1]
    if isinstance(parent, list):
        parent[_index(last, len(parent))] = value
        return
    assert isinstance(parent, MutableMapping)
    for key in parent:
        if key == last or str(key) == last:
            parent[key] = value
            return
    parent[last] = value



_OVERRIDE = re.compile(r"^(?P<path>[^=]+?)=(?P<value>.*)$", re.S)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``a:b:0=value`` -> (("a", "b", "0"), yaml-parsed value)."""
    match = _OVERRIDE.match(text)
    if not match or not match.group("path").strip():
        raise ConfigError([f"--set {text!r}: expected KEY:PATH=VALUE, e.g. optuna:n_trials=50"])
    try:
        value = yaml.safe_load(match.group("value")) if match.group("value") != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError([f"--set {text!r}: the value is not valid YAML ({err})"]) from None
    return tuple(match.group("path").strip().split(":")), value


def apply_overrides(hyper: dict[str, Any], model: dict[str, Any] | None,
                    overrides: Sequence[str]) -> list[str]:
    """Apply ``--set`` overrides in place; return problems (unknown model paths).

    A path whose first part is a section of the hyperparameter file (``optuna``, ``slurm``,
    ...) goes there; prefix ``hyper:`` or ``model:`` to say which file explicitly. Any other
    path must already exist in the model config: an override that would be ignored is an
    error, not a silent no-op.
    """
    problems = []
    for text in overrides:
        path, value = parse_override(text)
        target = prefixed = None
        if path[0] in ("hyper", "model"):
            target, path = path[0], path[1:]
            prefixed = target
        if target is None:
            target = "hyper" if path[0] in HYPER_SECTIONS else "model"
        if not path:
            problems.append(f"--set {text!r}: nothing after the '{target}:' prefix")
            continue
        if target == "hyper":
            problem = _set_hyper(hyper, path, value)
            if problem:
                problems.append(f"--set {text!r}: {problem}")
            continue
        if model is None:
            problems.append(f"--set {text!r}: no model config was given to override")
            continue
        full = _model_path(model, path, prefixed=prefixed == "model")
        if isinstance(full, str):
            problems.append(f"--set {text!r}: {full}")
            continue
        set_path(model, full, value)
    return problems


def _model_path(model: Mapping[str, Any], path: tuple[str, ...], *, prefixed: bool) -> tuple[str, ...] | str:
    """The key path of the model config an override names, or the problem.

    ``model:`` before a path names the file; when the model config has a top-level ``model`` key
    too, ``model:hidden_size`` may mean either. The reading that resolves is taken; when both
    resolve the override is refused, saying how to write each (``model:model:hidden_size`` is
    always the key under ``model``)."""
    whole = ("model",) + path if prefixed else None
    here, there = has_path(model, path), whole is not None and has_path(model, whole)
    if here and there:
        return (f"ambiguous: the model config has both {':'.join(path)!r} and {':'.join(whole)!r}; write "
                f"'model:model:{':'.join(path)}=...' for the key under 'model', or '{':'.join(path)}=...' "
                "(no prefix) for the top-level key")
    if here:
        return path
    if there:
        return whole
    tried = f"{':'.join(path)!r}" + (f" nor {':'.join(whole)!r}" if whole else "")
    return (f"neither {tried} is a key path of the model config" if whole else
            f"{tried} is not a key path of the model config") + (
        f"{did_you_mean(whole or path, model) or did_you_mean(path, model)} (overrides never add keys; "
        "prefix 'hyper:' for the hyperparameter file)")


def _set_hyper(hyper: dict[str, Any], path: tuple[str, ...], value: Any) -> str | None:
    """Set a path of the hyperparameter file, creating mappings as needed. Parameter keys hold
    colons themselves (``optimizer:learning_rate``): at each level the longest run of parts that
    names an existing key is taken as one key."""
    node = hyper
    i = 0
    while i < len(path) - 1:
        for j in range(len(path) - 1, i, -1):
            joined = ":".join(path[i:j])
            if j - i > 1 and joined in node:
                break
        else:
            j, joined = i + 1, path[i]
        child = node.setdefault(joined, {})
        if not isinstance(child, dict):
            return f"{joined!r} is not a mapping"
        node, i = child, j
    node[path[-1]] = value
    return None



def key_paths(config: Any, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every colon path of nested data, parents before children (``a``, ``a:b``, ``a:b:0``)."""
    found: list[str] = []
    if isinstance(config, Mapping):
        items: Sequence[tuple[str, Any]] = [(str(k), v) for k, v in config.items()]
    elif isinstance(config, list):
        items = [(str(i), v) for i, v in enumerate(config)]
    else:
        return found
    for part, value in items:
        path = prefix + (part,)
        found.append(":".join(path))
        found.extend(key_paths(value, path))
    return found


def closest_paths(path: Sequence[str], config: Any, n: int = 3) -> list[str]:
    """The key paths of ``config`` nearest to ``path`` (difflib), for 'did you mean' messages."""
    import difflib

    return difflib.get_close_matches(":".join(path), key_paths(config), n=n, cutoff=0.6)


def is_broken_path(config: Any, path: Sequence[str]) -> bool:
    """A colon path whose first key is in ``config`` but that does not resolve further (a later
    key missing, an index out of range): almost always a typo. Flat names are never broken."""
    return len(path) > 1 and has_path(config, path[:1]) and not has_path(config, path)


def did_you_mean(path: Sequence[str], config: Any) -> str:
    """``"; closest key paths: a:b, a:c"``, or "" when nothing is near."""
    near = closest_paths(path, config)
    return f"; closest key paths: {', '.join(near)}" if near else ""
