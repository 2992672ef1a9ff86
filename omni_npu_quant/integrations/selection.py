"""The one layer-selection grammar (``ignored_layers``, per-layer schemes, kept-float blocks).

A *pattern* selects layer names (dotted module paths such as ``model.layers.0.mlp.up_proj``):

* ``re:<regex>``  -- Python regular expression, matched against the whole name (``re.fullmatch``);
* a glob -- any pattern containing ``*``, ``?`` or ``[`` is matched with ``fnmatch.fnmatchcase``
  against the whole name (``*`` also crosses dots: ``*.down_proj`` matches every down_proj);
* otherwise an exact name or a dot-boundary prefix: ``model.layers.0`` matches
  ``model.layers.0`` and ``model.layers.0.mlp.up_proj`` but not ``model.layers.01.mlp.up_proj``.

Every pattern must match at least one candidate name; :func:`match_patterns` raises
:class:`SelectionError` naming the offending entry otherwise (a typo must never silently
quantize a layer the user wanted to keep in float).

When several per-layer entries match one name, the most specific wins: an exact name, then
the longest dot-boundary prefix, then the first matching glob / regex in the order given.
Ignored layers always win over per-layer schemes.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

__all__ = [
    "SelectionError", "Pattern", "compile_pattern", "match_patterns", "resolve_layer_choice",
    "leading_blocks", "BLOCK_RE",
]

_GLOB_CHARS = set("*?[")
# the first ``<container>.<int>`` path component: ``model.layers.3`` / ``blocks.0`` / ``transformer_blocks.12``
BLOCK_RE = re.compile(r"^(?P<block>(?:[^.]+\.)*?[^.]+\.(?P<idx>\d+))(?:\.|$)")


class SelectionError(ValueError):
    """A selection entry is malformed or matches no layer."""


@dataclass(frozen=True)
class Pattern:
    text: str
    kind: str  # "exact" (exact name or dot-boundary prefix) | "glob" | "regex"
    _rx: "re.Pattern[str] | None" = None

    def matches(self, name: str) -> bool:
        if self.kind == "regex":
            return self._rx.fullmatch(name) is not None
        if self.kind == "glob":
            return fnmatch.fnmatchcase(name, self.text)
        return name == self.text or name.startswith(self.text + ".")

    def specificity(self, name: str) -> tuple[int, int]:
        """Higher sorts first: exact name > longer prefix > glob/regex."""
        if self.kind == "exact":
            return (2, 0) if name == self.text else (1, len(self.text))
        return (0, 0)


def compile_pattern(text: str, *, what: str = "pattern") -> Pattern:
    if not isinstance(text, str) or not text.strip():
        raise SelectionError(f"{what}: empty or non-string layer pattern {text!r}")
    text = text.strip()
    if text.startswith("re:"):
        body = text[3:]
        try:
            rx = re.compile(body)
        except re.error as e:
            raise SelectionError(f"{what}: invalid regular expression {body!r}: {e}") from None
        return Pattern(text, "regex", rx)
    if _GLOB_CHARS & set(text):
        return Pattern(text, "glob")
    if text.endswith("."):
        raise SelectionError(f"{what}: pattern {text!r} ends with '.'; write the prefix without it")
    return Pattern(text, "exact")


def match_patterns(patterns: Iterable[str], names: Sequence[str], *, what: str = "ignored_layers",
                   allow_unmatched: bool = False) -> dict[str, list[str]]:
    """{pattern: [matched names]}; raises if a pattern matches nothing (unless allowed)."""
    out: dict[str, list[str]] = {}
    for text in patterns:
        p = compile_pattern(text, what=what)
        hits = [n for n in names if p.matches(n)]
        if not hits and not allow_unmatched:
            sample = ", ".join(list(names)[:6]) + (", ..." if len(names) > 6 else "")
            raise SelectionError(f"{what}: entry {text!r} matches no layer (layers: {sample})")
        out[text] = hits
    return out


def resolve_layer_choice(name: str, compiled: Sequence[tuple[Pattern, object]]):
    """The value of the most specific matching entry for ``name`` (or ``None`` if none)."""
    best = None
    best_key = None
    for order, (p, value) in enumerate(compiled):
        if not p.matches(name):
            continue
        spec = p.specificity(name)
        key = (spec[0], spec[1], -order)
        if best_key is None or key > best_key:
            best, best_key = (p, value), key
    return best


def leading_blocks(names: Sequence[str], count: int) -> set[str]:
    """Names inside the first ``count`` numbered blocks (``model.layers.0`` ... ``model.layers.{count-1}``).

    The block of a name is its first ``<container>.<int>`` component; blocks are ordered by
    index within each container (``model.layers`` / ``blocks`` / ``transformer_blocks``...).
    """
    if count <= 0:
        return set()
    chosen: set[str] = set()
    for n in names:
        m = BLOCK_RE.match(n)
        if m and int(m.group("idx")) < count:
            chosen.add(n)
    if not chosen:
        raise SelectionError(f"keep_first_blocks={count}: no layer name contains a numbered block "
                             f"('<container>.<index>.'), e.g. {list(names)[:3]}")
    return chosen


def as_dict(mapping: Mapping | None) -> dict:
    return dict(mapping or {})
