"""The predecessors' Python names, so that objective files written for them load unchanged.

Objective files written for NCAR's ``aimlutils`` (``aimlutils.hyper_opt.*``) and ``echo-opt``
(``echo.src.*``) import those packages by name. For such a file a finder at the *end* of
``sys.meta_path`` answers those names with modules built from hyper_opt's own compatible
implementations (:mod:`hyper_opt.compat.echo`, :mod:`hyper_opt.compat.aimlutils`). Being last,
it is asked only when the real package is not importable: an installed echo-opt or aimlutils
always wins. Nothing is installed into site-packages.

The finder is scoped: :mod:`hyper_opt.loader` installs it only for an objective whose source
imports a predecessor's module by its dotted name (:func:`references`: anywhere in the file, also
inside ``train``), or whose import fails on such a name in a module it imports; a plain objective
never sees it, so ``import echo`` fails there as it would without hyper_opt. Once installed it
stays for the process (an objective may import lazily inside ``train``).

Which names were answered this way is kept (:func:`used`), so that the worker can say it in one
log line and users can move to ``from hyper_opt import ...`` when they want.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

# alias module name -> (implementation module, names it exports; None: a namespace package)
ALIASES: dict[str, tuple[str, Sequence[str]] | None] = {
    "echo": None,
    "echo.src": None,
    "echo.src.base_objective": ("hyper_opt.compat.echo", (
        "BaseObjective", "trial_suggest_loader", "recursive_config_reader", "recursive_update",
        "defaultdict", "copy", "glob", "os", "logging", "warnings", "logger")),
    "echo.src.trial_suggest": ("hyper_opt.compat.echo", (
        "trial_suggest_loader", "supported_trials", "logging", "warnings", "logger")),
    "echo.src.pruners": ("hyper_opt.compat.echo", (
        "KerasPruningCallback", "pruners", "supported_pruners", "optuna", "logging", "warnings", "logger")),
    "echo.src.samplers": ("hyper_opt.compat.echo", (
        "samplers", "supported_samplers", "logging", "warnings", "logger")),
    "echo.src.config": ("hyper_opt.compat.echo", (
        "configure_storage", "configure_sampler", "configure_pruner", "recursive_config_reader",
        "recursive_update", "config_check", "os", "yaml", "optuna", "logging", "warnings", "logger")),
    "aimlutils": None,
    # aiml-utils between the two eras kept echo-opt's layout inside aimlutils (aimlutils.echo.src.*)
    "aimlutils.echo": None,
    "aimlutils.echo.src": None,
    "aimlutils.hyper_opt": None,
    "aimlutils.hyper_opt.base_objective": ("hyper_opt.compat.aimlutils", (
        "BaseObjective", "trial_suggest_loader", "recursive_update", "defaultdict", "copy", "os", "sys",
        "random", "logging", "optuna", "warnings", "logger", "pd")),
    "aimlutils.hyper_opt.utils": ("hyper_opt.compat.aimlutils", (
        "trial_suggest_loader", "KerasPruningCallback", "samplers", "supported_trials",
        "supported_samplers", "sys", "optuna", "logging", "warnings", "logger")),
}
for _name in [n for n in ALIASES if n.startswith("echo.src.")]:
    ALIASES["aimlutils." + _name] = ALIASES[_name]
TOP_LEVEL = frozenset(name.split(".")[0] for name in ALIASES)

_lock = threading.Lock()
_used: list[str] = []


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        target = ALIASES[module.__name__]
        module.__doc__ = (f"hyper_opt's stand-in for {module.__name__} (the real package is not "
                          "installed); see docs/migrating.md")
        module.__dict__["__hyper_opt_compat__"] = True
        if target is None:
            module.__path__ = []  # a package: its submodules come from this finder only
            return
        impl_name, names = target
        impl = importlib.import_module(impl_name)
        exported = [n for n in names if hasattr(impl, n)]  # e.g. "pd" only where pandas is installed
        for name in exported:
            setattr(module, name, getattr(impl, name))
        module.__all__ = exported
        with _lock:
            if module.__name__ not in _used:
                _used.append(module.__name__)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Answers the predecessors' module names; last in ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in ALIASES:
            return None
        top = fullname.split(".")[0]
        parent = sys.modules.get(top)
        if fullname != top and not getattr(parent, "__hyper_opt_compat__", False):
            return None  # the real top-level package is installed: its own submodules only
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=ALIASES[fullname] is None)


_FINDER = _AliasFinder()


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (idempotent)."""
    if not installed():
        sys.meta_path.append(_FINDER)


def installed() -> bool:
    """Whether the finder is on ``sys.meta_path``."""
    return any(isinstance(f, _AliasFinder) for f in sys.meta_path)


def is_predecessor_name(name: str | None) -> bool:
    """``name`` is one of the module names the stand-ins answer (``echo``, ``echo.src.config``...)."""
    return bool(name) and name in ALIASES


def references(source: str) -> list[str]:
    """The predecessors' dotted module names that Python ``source`` imports, anywhere in the file
    (module level or inside a function such as ``train``), in order; [] when it cannot be parsed.

    Only dotted names count (``echo.src.base_objective``, ``aimlutils.hyper_opt.utils``): a bare
    ``import echo`` or ``import aimlutils`` (a probe for an installed package) does not ask for the
    stand-ins. ``importlib.import_module("echo.src...")`` with a literal name counts too."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names = [node.args[0].value]
        for name in names:
            if "." in name and name in ALIASES and name not in found:
                found.append(name)
    return found


def shadowing(name: str | None) -> str | None:
    """When importing the predecessor's ``name`` failed because a module of the same top-level
    name that is not the predecessor (a local ``echo.py``) was imported instead, say so."""
    if not name or "." not in name or name.split(".")[0] not in TOP_LEVEL:
        return None
    top = name.split(".")[0]
    module = sys.modules.get(top)
    if module is None or getattr(module, "__hyper_opt_compat__", False):
        return None
    where = getattr(module, "__file__", None) or ", ".join(getattr(module, "__path__", []) or []) or repr(module)
    tool = "echo-opt" if name.startswith(("echo.", "aimlutils.echo.")) else "aimlutils"
    return (f"'{top}' is {where}, a module of your own that shadows {tool}'s package {top!r}, so "
            f"{name} cannot be found in it; hyper_opt's stand-ins answer {name} only when no other "
            f"module named {top!r} is importable: rename {where} (or install {tool})")


def uninstall() -> None:
    """Remove the finder and any alias modules it created (for tests)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AliasFinder)]
    for name in list(sys.modules):
        if name in ALIASES and getattr(sys.modules[name], "__hyper_opt_compat__", False):
            del sys.modules[name]
    with _lock:
        _used.clear()


def used() -> list[str]:
    """The predecessor module names answered with hyper_opt's stand-ins in this process."""
    with _lock:
        return [n for n in _used]


def migration_hint(names: Sequence[str]) -> str:
    """One line naming the stand-ins used and where to move."""
    return (f"loaded with hyper_opt's stand-ins for {', '.join(names)} (the predecessor is not installed); "
            "they work as they are; to migrate, import from hyper_opt instead (docs/migrating.md)")
