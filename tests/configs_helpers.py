"""The stage config class by stage name, for the test_configs_* files."""

from actdict.cli import _STAGES


def _stage_cls(stage):
    import importlib

    _, mod, cls = _STAGES[stage]
    return getattr(importlib.import_module(mod), cls)
