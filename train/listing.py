"""``actdict variants [NAME ...]``: the dictionary variants this installation can train, installed plugins'
included (``train.plugins``), with their params and defaults.

Without names, each variant's first paragraph of its module docstring (what it is, where from) and its
params; with names, each one's whole docstring (formulas, defaults, every open choice), its params and
which must be > 0. What a config may set in ``train.dicts[].params`` is exactly what is listed.
``--check`` runs the protocol's contract checks on the named variants (``train.contract``: a plugin's
author needs no copy of actdict's tests), with ``--set PARAM=VALUE`` and ``--k N``; exit 1 when one fails;
``--ddp`` adds a training on 2 torchrun ranks compared with one process's (``train.ddp_check``, ~20 s)."""

from __future__ import annotations

import argparse
import sys
import textwrap

import yaml

from actdict.errors import printable
from actdict.train.protocol import Dictionary, make, param_defaults, plugin_hint, registry


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


def checked(names: list[str], params: dict, k: int, ddp: bool = False) -> int:
    """``--check``: each variant's contract checks (``train.contract``), one line each, and with ``ddp`` its
    2-rank training against one process's (``train.ddp_check``); 0 when all pass, 1 when one fails, 2 when
    a variant cannot be built with these params and k (a param tied to k)."""
    from actdict.config import ConfigError
    from actdict.train import ddp_check
    from actdict.train.contract import check

    status = 0
    for name in names:
        try:
            make(name, 7, k, **params)
        except ConfigError as e:
            given = params or "its defaults"
            print(printable(f"actdict variants: {name} cannot be built at k {k} with {given} ({e}): give "
                            "--set PARAM=VALUE or --k N"), file=sys.stderr)
            status = 2
            continue
        print(printable(f"{name}: the protocol's contract (k {k}{f', params {params}' if params else ''})"))
        found = check(name, params, k)
        if ddp:
            found["ddp"] = _guarded(ddp_check.check, name, params, k)
        for what, bad in found.items():
            status = max(status, int(bool(bad)))
            print(printable(f"  {what:<10} {'ok' if not bad else 'FAILED: ' + '; '.join(bad)}"))
    return status


def _guarded(run, *args) -> list[str]:
    """``run(*args)``'s findings, or the exception it raised as one (a training that outlived its timeout)."""
    try:
        return run(*args)
    except Exception as e:  # noqa: BLE001 - a check that breaks is a finding of that check
        return [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]]


def main(argv: list[str] | None = None) -> int:
    """``actdict variants [NAME ...]`` (``python -m actdict.train.listing``)."""
    p = argparse.ArgumentParser(prog="actdict variants", description="the dictionary variants this "
                                "installation can train (plugins included), their params and defaults")
    p.add_argument("names", nargs="*", metavar="NAME", help="show these variants in full (their module's "
                   "docstring: formulas, defaults, open choices)")
    p.add_argument("--check", action="store_true", help="run the protocol's contract checks on the named "
                   "variants (shapes, loss terms, gradients, save/load, a short training; train/contract.py)")
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="with --check: a param "
                   "of the variants checked (a value read as YAML), e.g. --set topk=4")
    p.add_argument("--ddp", action="store_true", help="with --check: also train each variant on 2 torchrun "
                   "CPU ranks and in one process and compare the two (train/ddp_check.py; ~20 s each)")
    p.add_argument("--k", type=int, default=16, help="with --check: latents of the dictionaries built (16)")
    a = p.parse_args(argv)
    classes = registry()
    if unknown := [n for n in a.names if n not in classes]:
        print(printable(f"actdict variants: unknown variant {', '.join(map(repr, unknown))}; registered: "
                        f"{', '.join(sorted(classes))}{plugin_hint()}"), file=sys.stderr)
        return 2
    if a.check or a.set or a.ddp:
        if not a.check or not a.names or a.k < 1 or any("=" not in s for s in a.set):
            p.error("--check needs variant names; --set and --ddp go with --check; --set takes PARAM=VALUE, "
                    "--k a number >= 1")
        params = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
        return checked([n for n in dict.fromkeys(a.names)], params, a.k, a.ddp)
    if a.names:
        blocks = [full(n, classes[n]) for n in dict.fromkeys(a.names)]
    else:
        blocks = [brief(n, cls) for n, cls in sorted(classes.items())]
    print(printable("\n\n".join("\n".join(b) for b in blocks)))
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
