"""The scheme registry: every scheme module registers itself by name and msModelSlim label(s).

A scheme is one module in this package that decorates its class with ``@register_scheme``;
nothing else lists schemes.  ``SCHEMES`` (name -> class), ``LABEL_TO_SCHEME`` (label -> name),
``ONLINE_SCHEMES`` (quantizable from float weights alone) and ``MAIN_SCHEMES`` (what the demo and
the docs call "every scheme") are derived from the registrations, in each scheme's ``order``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Iterator, Mapping

from .base import Scheme

__all__ = ["register_scheme", "get_scheme", "scheme_names", "SCHEMES", "LABEL_TO_SCHEME", "ONLINE_SCHEMES",
           "MAIN_SCHEMES"]

_CLASSES: dict[str, type[Scheme]] = {}
_LABELS: dict[str, str] = {}
_NOT_SCHEMES = {"base", "registry", "mx_base", "int8_base"}


def register_scheme(*extra_labels: str):
    """Class decorator: ``@register_scheme()`` or ``@register_scheme("W8A8_MIX")`` for labels read
    as this scheme besides its own ``label``."""

    def deco(cls: type[Scheme]) -> type[Scheme]:
        if not cls.name or not cls.label:
            raise TypeError(f"{cls.__name__}: a registered scheme needs 'name' and 'label'")
        for key, table in ((cls.name, _CLASSES),):
            if key in table and table[key] is not cls:
                raise TypeError(f"scheme name {key!r} registered twice ({table[key].__name__}, {cls.__name__})")
        labels = (cls.label,) + tuple(extra_labels)
        for lab in labels:
            if _LABELS.get(lab, cls.name) != cls.name:
                raise TypeError(f"label {lab!r} already belongs to scheme {_LABELS[lab]!r}")
        cls.labels = labels
        _CLASSES[cls.name] = cls
        for lab in labels:
            _LABELS[lab] = cls.name
        return cls

    return deco


_loaded = False


def _load_all() -> None:
    """Import every scheme module of this package once (a new scheme is a new module, nothing else)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if mod.name not in _NOT_SCHEMES and not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")


class _View(Mapping):
    """A read-only, ordered view of the registry that loads every scheme module on first use."""

    def __init__(self, build):
        self._build = build

    def _d(self):
        _load_all()
        return self._build()

    def __getitem__(self, key):
        return self._d()[key]

    def __iter__(self) -> Iterator:
        return iter(self._d())

    def __len__(self) -> int:
        return len(self._d())

    def __repr__(self) -> str:
        return repr(dict(self._d()))


def _ordered() -> dict[str, type[Scheme]]:
    return dict(sorted(_CLASSES.items(), key=lambda kv: (kv[1].order, kv[0])))


SCHEMES: Mapping[str, type[Scheme]] = _View(_ordered)
LABEL_TO_SCHEME: Mapping[str, str] = _View(lambda: dict(_LABELS))


def scheme_names(*, online: bool | None = None, main: bool | None = None) -> tuple[str, ...]:
    """Registered scheme names in display order, optionally only online / main-job ones."""
    out = []
    for name, cls in SCHEMES.items():
        if online is not None and (not cls.needs_calibration) != online:
            continue
        if main is not None and cls.in_main_job != main:
            continue
        out.append(name)
    return tuple(out)




def __getattr__(attr):  # ONLINE_SCHEMES / MAIN_SCHEMES, derived on first access
    if attr == "ONLINE_SCHEMES":
        return scheme_names(online=True)
    if attr == "MAIN_SCHEMES":
        return scheme_names(main=True)
    raise AttributeError(attr)


def get_scheme(name: str, **options) -> Scheme:
    """Scheme by name (``w8a8_dynamic``...) or msModelSlim label (``W4A4_MXFP4``...)."""
    _load_all()
    key = _LABELS.get(name, name)
    if key not in _CLASSES:
        raise ValueError(f"unknown scheme {name!r}; known: {list(SCHEMES)} and labels {sorted(_LABELS)}")
    return _CLASSES[key](**options)
