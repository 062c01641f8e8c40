"""``actdict variants [NAME ...]``: the dictionary variants this installation can train, installed plugins'
included (``train.plugins``), with their params and defaults.

Without names, each variant's first paragraph of its module docstring (what it is, where from) and its
params; with names, each one's whole docstring (formulas, defaults, every open choice), its params and
which must be > 0. What a config may set in ``train.dicts[].params`` is exactly what is listed."""

from __future__ import annotations

import argparse
import sys
import textwrap

from actdict.errors import printable
from actdict.train.protocol import Dictionary, param_defaults, plugin_hint, registry


def module_doc(cls: type[Dictionary]) -> str:
    """The docstring of the module that defines ``cls`` (its class docstring if the module has none)."""
    module = sys.modules.get(cls.__module__)
    return ((module.__doc__ if module else None) or cls.__doc__ or "").strip()


def params_line(cls: type[Dictionary]) -> str:
    """``params: a=1, b=0.5`` (``param_defaults``; ``none`` for a variant without any), then ``; also: ...``
    for its ``optional_params`` (accepted, stored only when given)."""
    said = lambda params: ", ".join(f"{k}={v!r}" for k, v in params.items())  # noqa: E731
    also = said(getattr(cls, "optional_params", {}))
    return f"params: {said(param_defaults(cls)) or 'none'}" + (f"; also: {also}" if also else "")


def origin(cls: type[Dictionary]) -> str:
    """'' for actdict's own variants, else ' (plugin MODULE)'."""
    return "" if cls.__module__.startswith("actdict.") else f" (plugin {cls.__module__})"


def brief(name: str, cls: type[Dictionary], width: int = 100) -> list[str]:
    """A variant's lines in the listing: its name, its docstring's first paragraph, its params."""
    first = " ".join(module_doc(cls).split("\n\n")[0].split())
    wrap = textwrap.wrap(first, width, initial_indent="  ", subsequent_indent="  ",
                         break_on_hyphens=False) or ["  (no docstring)"]
    return [f"{name}{origin(cls)}", *wrap,
            *textwrap.wrap(params_line(cls), width, initial_indent="  ", subsequent_indent="    ")]


def full(name: str, cls: type[Dictionary]) -> list[str]:
    """One variant in full: name, whole docstring, params, those that must be > 0."""
    positive = f"must be > 0: {', '.join(cls.positive)}" if cls.positive else ""
    return [f"{name}{origin(cls)}", "", module_doc(cls) or "(no docstring)", "", params_line(cls),
            *([positive] if positive else [])]


def main(argv: list[str] | None = None) -> int:
    """``actdict variants [NAME ...]`` (``python -m actdict.train.listing``)."""
    p = argparse.ArgumentParser(prog="actdict variants", description="the dictionary variants this "
                                "installation can train (plugins included), their params and defaults")
    p.add_argument("names", nargs="*", metavar="NAME", help="show these variants in full (their module's "
                   "docstring: formulas, defaults, open choices)")
    a = p.parse_args(argv)
    classes = registry()
    if unknown := [n for n in a.names if n not in classes]:
        print(printable(f"actdict variants: unknown variant {', '.join(map(repr, unknown))}; registered: "
                        f"{', '.join(sorted(classes))}{plugin_hint()}"), file=sys.stderr)
        return 2
    if a.names:
        blocks = [full(n, classes[n]) for n in dict.fromkeys(a.names)]
    else:
        blocks = [brief(n, cls) for n, cls in sorted(classes.items())]
    print(printable("\n\n".join("\n".join(b) for b in blocks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
