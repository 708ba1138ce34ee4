"""Collecting configuration problems with their key paths, and the value tests they share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def tname(value: Any) -> str:
    return type(value).__name__


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_bool(value: Any) -> bool | None:
    """YAML booleans and the 0/1 integers the older format uses; None when neither."""
    if isinstance(value, bool):
        return value
    if is_int(value) and value in (0, 1):
        return bool(value)
    return None


class Checker:
    """Collects problems with their key paths."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def unknown_keys(self, section: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in section:
            if key not in allowed:
                self.add(f"{path}:{key}" if path else str(key),
                         f"unknown key (allowed: {', '.join(allowed)})")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, f"must be a mapping, got {tname(value)} {value!r}")
            return {}
        return value

    def integer(self, value: Any, path: str, *, minimum: int, default: int) -> int:
        if value is None:
            return default
        if not is_int(value) or value < minimum:
            self.add(path, f"must be an integer >= {minimum}, got {value!r}")
            return default
        return value

    def boolean(self, value: Any, path: str, *, default: bool) -> bool:
        if value is None:
            return default
        result = as_bool(value)
        if result is None:
            self.add(path, f"must be true/false (or 1/0), got {value!r}")
            return default
        return result

    def string(self, value: Any, path: str, *, default: str | None = None) -> str | None:
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(path, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add(path, f"must be a string or a list of strings, got {value!r}")
            return ()
        return tuple(value)

