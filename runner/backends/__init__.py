"""Backends: a registry of functions that take an exported model and return something faster.

A backend is one function

    optimize(exported, inputs, precision, options) -> callable(*images) -> flat outputs

registered with ``@register("name", options={...})`` in its own module under runner/backends/
and selected by conf/backend/<name>.yaml. `options` declares the knobs it takes (name -> allowed
values or types); the registry validates a run's options against it before anything runs
(`validate_options`), so a typo fails fast with the field and the allowed values. A backend
raises `Unsupported` when it cannot apply (optional package missing, model it cannot handle);
the run then records status=unsupported with that reason. Optional packages are imported inside the
function, so importing this registry never needs them; a backend that names them in `requires`
is reported unsupported by the parent at once, without building a model, when one is absent
(`missing`). A backend that applies the precision's dtype itself registers `owns_precision=True`
and the harness then does not wrap its calls in autocast (runner.precision). A backend whose
measuring process needs environment variables set from its start names them in `environment`
(`environment(name)`; the parent adds them to that child's environment).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from typing import Any


class Unsupported(Exception):
    """This combination cannot run here; the message says why and how to get it."""


Backend = Callable[..., Callable]

# name -> (optimize, allowed options, version): filled by @register as backend modules import
_BACKENDS: dict[str, tuple[Backend, dict[str, tuple], Callable[[], str]]] = {}
# name -> (modules it needs, what to tell the user when one is missing)
_REQUIRES: dict[str, tuple[tuple[str, ...], str]] = {}
_OWNS_PRECISION: set[str] = set()  # backends that apply the dtype themselves
_ENVIRONMENT: dict[str, dict[str, str]] = {}  # variables a backend's measuring process needs
_COMBINED: dict[str, Callable[[dict[str, Any]], None] | None] = {}  # options checked together


def _torch_version() -> str:
    import torch

    return f"torch {torch.__version__}"


def register(
    name: str,
    options: dict[str, tuple] | None = None,
    version: Callable[[], str] = _torch_version,
    requires: tuple[str, ...] = (),
    how_to_get: str = "",
    owns_precision: bool = False,
    environment: dict[str, str] | None = None,
    combined: Callable[[dict[str, Any]], None] | None = None,
):
    """Register `optimize` under `name`. `options`: option name -> tuple of allowed values or
    types; `version()` names what does the work, for the row; `requires`: top-level modules it
    imports that may be absent, and `how_to_get` what to tell the user then; `owns_precision`:
    it applies the precision's dtype itself, so the harness does not autocast its calls;
    `environment`: variables its measuring process must have from its start; `combined`:
    checks the options together (values each option allows alone but not with another),
    raising ValueError, so that such input is refused before a run as any other."""

    def decorate(fn: Backend) -> Backend:
        if name in _BACKENDS and _BACKENDS[name][0] is not fn:
            raise ValueError(f"backend {name!r} registered twice")
        _BACKENDS[name] = (fn, dict(options or {}), version)
        _REQUIRES[name] = (tuple(requires), how_to_get)
        if owns_precision:
            _OWNS_PRECISION.add(name)
        _ENVIRONMENT[name] = dict(environment or {})
        _COMBINED[name] = combined
        return fn

    return decorate


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def names() -> list[str]:
    _import_all()
    return sorted(_BACKENDS)


def get(name: str) -> Backend:
    _import_all()
    if name not in _BACKENDS:
        raise KeyError(f"unknown backend {name!r}; registered: {sorted(_BACKENDS)}")
    return _BACKENDS[name][0]


def owns_precision(name: str) -> bool:
    """Whether backend `name` applies the precision's dtype itself (runner.precision)."""
    get(name)
    return name in _OWNS_PRECISION


def environment(name: str) -> dict[str, str]:
    """The environment variables backend `name`'s measuring process needs from its start."""
    get(name)
    return dict(_ENVIRONMENT.get(name, {}))


def missing(name: str) -> str | None:
    """Why backend `name` cannot run in this environment (a module it requires is not
    installed), or None. Looks modules up without importing them."""
    get(name)
    modules, how_to_get = _REQUIRES.get(name, ((), ""))
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    found = f"module {', '.join(absent)} not found"
    return f"{how_to_get} ({found})" if how_to_get else f"{name}: {found}"


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options, checked against what backend `name` declared; ValueError otherwise."""
    get(name)
    checked = check_options(name, dict(options), _BACKENDS[name][1])
    if _COMBINED.get(name) is not None:
        _COMBINED[name](checked)
    return checked


def version(name: str) -> str:
    """What does the backend's work, with its version; '' where that cannot be told."""
    get(name)
    try:
        return _BACKENDS[name][2]()
    except Exception:  # an optional package that is absent has no version
        return ""


def check_options(backend: str, options: dict[str, Any], allowed: dict[str, tuple]) -> dict:
    """Validate `options` against `allowed` (name -> tuple of allowed values or types).

    Returns the options; raises ValueError naming the field and what it may be.
    """
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"backend={backend}: unknown option(s) {unknown}; allowed: {sorted(allowed)}"
        )
    for key, value in options.items():
        choices = allowed[key]
        types = tuple(c for c in choices if isinstance(c, type))
        values = [c for c in choices if not isinstance(c, type)]
        ok = (
            types
            and isinstance(value, types)
            and not (isinstance(value, bool) and bool not in types and int in types)
        ) or any(value == v and type(value) is type(v) for v in values)
        if not ok:
            shown = [c.__name__ if isinstance(c, type) else repr(c) for c in choices]
            raise ValueError(
                f"backend={backend}: options.{key}={value!r}; allowed: {', '.join(shown)}"
            )
    return options
