"""Imports follow the data (docs/architecture.md): harvest knows nothing of train or analyze, train nothing of
analyze, and the shared modules of ``actdict/`` none of the stages (but the CLI, which dispatches to them).
Every import counts, inside functions too, and so does a module named to ``importlib.import_module``. And a
variant is one file behind the protocol: no other module imports it or tests a variant's name."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
STAGES = {"harvest", "train", "analyze"}
VARIANTS = "actdict.train.variants"
FORBIDDEN = {"harvest": {"train", "analyze"}, "train": {"analyze"}, "actdict": STAGES}


def stage_of(name: str) -> str | None:
    """The stage a module name belongs to: ``actdict.<stage>...`` or a bare ``<stage>...``."""
    parts = name.split(".")
    parts = parts[1:] if parts[0] == "actdict" else parts
    return parts[0] if parts and parts[0] in STAGES else None


def imported_modules(path: Path, package: list[str]) -> list[tuple[int, str]]:
    """(line, module) of every module that ``path`` (a module of ``package``, e.g. ['actdict', 'train',
    'variants']) imports, relatively too, or names as a string (``importlib.import_module``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            names = [".".join(base + ([node.module] if node.module else []))]
            names = [f"{names[0]}.{a.name}" for a in node.names] if not node.module else names
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if re.fullmatch(r"actdict(\.\w+)+", node.value) else []
        else:
            continue
        found += [(node.lineno, n) for n in names]
    return sorted(found)


def imported_stages(path: Path, package: list[str]) -> list[tuple[int, str]]:
    """(line, stage) of every stage module ``path`` imports (``imported_modules``)."""
    stages = [(line, stage_of(name)) for line, name in imported_modules(path, package)]
    return [(line, stage) for line, stage in stages if stage]


def package(p: Path) -> list[str]:
    """The installed package of the repository's module ``p``: harvest/x.py is actdict.harvest's."""
    parts = list(p.parent.relative_to(ROOT).parts)
    return parts if parts[0] == "actdict" else ["actdict", *parts]


def violations(folder: str) -> list[str]:
    skip = {"cli.py"} if folder == "actdict" else set()
    return [f"{p.relative_to(ROOT)}:{line} imports actdict.{stage}"
            for p in sorted((ROOT / folder).rglob("*.py")) if p.name not in skip
            for line, stage in imported_stages(p, package(p)) if stage in FORBIDDEN[folder]]


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_follow_the_data(folder):
    assert violations(folder) == []


def test_the_check_sees_every_form_of_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import numpy\nimport train\nfrom .. import analyze\nfrom ..harvest import store\n\n"
                 "def f():\n    from actdict.train.checkpoint import load\n"
                 "    import actdict.analyze.metrics\n    return 'actdict.analyze.report'\n")
    assert imported_stages(p, ["actdict", "harvest"]) == [
        (2, "train"), (3, "analyze"), (4, "harvest"), (7, "train"), (8, "analyze"), (9, "analyze")]



def test_only_the_registry_imports_the_variants():
    """A variant is one file behind the protocol: outside ``train/variants/`` only ``train.protocol``'s
    registry imports the variants, so that no stage special-cases one (a variant's note before a run is
    ``Dictionary.run_note``)."""
    outside = [p for folder in FORBIDDEN for p in (ROOT / folder).rglob("*.py")
               if "variants" not in p.parts and p != ROOT / "train" / "protocol.py"]
    found = sorted(f"{p.relative_to(ROOT)}:{line} imports {name}" for p in outside
                   for line, name in imported_modules(p, package(p)) if name.startswith(VARIANTS))
    assert found == []


def test_no_stage_compares_a_variant_by_name():
    """What one variant does differently is its own file's (the protocol's methods and class attributes): no
    module outside ``train/variants/`` tests a dictionary's variant against a variant's name."""
    from actdict.train.protocol import registry

    names, found = set(registry()), []
    for p in (p for folder in FORBIDDEN for p in (ROOT / folder).rglob("*.py") if "variants" not in p.parts):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                found += [f"{p.relative_to(ROOT)}:{node.lineno} {v!r}" for v in consts if v in names]
    assert sorted(found) == []
