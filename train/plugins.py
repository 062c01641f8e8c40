"""Variants from other packages: the entry points of group ``actdict.variants``.

A package that declares, in its ``pyproject.toml``::

    [project.entry-points."actdict.variants"]
    tied_relu = "my_dicts.tied_relu"

has its module imported by :func:`actdict.train.protocol.registry` (once per process), after actdict's own
variants; the module registers its classes with ``@register`` as ours do (an entry point may also name a
:class:`~actdict.train.protocol.Dictionary` subclass, ``"my_dicts.tied_relu:TiedReLU"``, which is then
registered if it is not yet). Its variants are then named in ``train.dicts`` like any other, and every stage
(training, torchrun ranks, analysis, the lens, export) finds them: nothing is named in the config.

A plugin that fails to import, registers no variant (its class lacks ``@register``), or registers a name
already taken, is left out whole (whatever it registered before failing is undone, and a module it imported
that registered variants is imported anew by its own entry point) with one warning; actdict's own variants
are never replaced. The failures are kept (:func:`failures`) so that a config naming such a variant is told
why it is missing.
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings

from actdict.errors import ActdictWarning

GROUP = "actdict.variants"

_FAILED: dict[str, str] | None = None  # "name (value)" -> why it was left out; None: not yet loaded


def load(registry: dict[str, type]) -> None:
    """Import every installed plugin once (``registry``: the name -> class table ``register`` fills)."""
    global _FAILED
    if _FAILED is not None:
        return
    _FAILED = {}  # set first: a plugin that asks for the registry while it imports sees actdict's own
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        if why := _load_one(ep, registry):
            _FAILED[f"{ep.name} ({ep.value})"] = why
            warnings.warn(f"variant plugin {ep.name} ({ep.value}) left out: {why}", ActdictWarning,
                          stacklevel=2)


def _load_one(ep: importlib.metadata.EntryPoint, registry: dict[str, type]) -> str:
    """Import one entry point; '' when it loaded, else why not (with the registry as it was before)."""
    from actdict.train.protocol import Dictionary, register

    before = dict(registry)
    try:
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, Dictionary):
            if registry.get(obj.variant) is not obj:
                register(obj)
        elif isinstance(obj, type) or not (hasattr(obj, "__path__") or hasattr(obj, "__file__")):
            kind = "class of no Dictionary" if isinstance(obj, type) else type(obj).__name__
            raise TypeError(f"it names a {kind}, not a module or a Dictionary class")
        elif not _registers(obj.__name__, registry):
            raise LookupError("its module registered no variant (its Dictionary subclass needs @register)")
    except Exception as e:  # noqa: BLE001 - a broken plugin must not stop actdict's own variants
        for module in {cls.__module__ for name, cls in registry.items() if before.get(name) is not cls}:
            sys.modules.pop(module, None)  # another entry point's, imported on its way: imported anew
        registry.clear()
        registry.update(before)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    return ""


def _registers(module: str, registry: dict[str, type]) -> bool:
    """Some registered class comes from ``module`` or a module inside it (its entry point did its work)."""
    return any(c.__module__ == module or c.__module__.startswith(module + ".") for c in registry.values())


def failures() -> dict[str, str]:
    """The plugins left out, with why ("name (value)" -> reason); empty before :func:`load`."""
    return dict(_FAILED or {})


def reset() -> None:
    """Forget what was loaded (tests: the next ``registry()`` looks for plugins again)."""
    global _FAILED
    _FAILED = None
