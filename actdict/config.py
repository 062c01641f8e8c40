"""Typed experiment configs: one YAML file, one frozen dataclass per stage.

An experiment YAML has a few shared top-level keys (``run_dir``, ``seed``, ``store``) and one
section per stage (``harvest``, ``train``, ``analyze``). Each stage owns the dataclass of its
section; this module only knows how to turn plain YAML data into such dataclasses:

* unknown keys are rejected with the list of valid ones (a typo never passes silently),
* values are type-checked against the annotations (int, float, str, bool, Optional, list, tuple,
  nested dataclasses, lists of dataclasses),
* ``key.sub=value`` overrides from the command line are applied before validation; the value is
  parsed as YAML (``train.epochs=3``, ``harvest.hooks=[blocks.1.hook_resid_post]``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from actdict.errors import ActdictError

T = TypeVar("T")

STAGES = ("harvest", "train", "analyze")


class ConfigError(ActdictError, ValueError):
    """A config file or override that does not describe a valid experiment."""


def check_device(name: str, where: str, float64: bool = False) -> None:
    """A config's device string names a device this torch can use ('auto' always can): ConfigError naming
    ``where`` (``train.device``, ``harvest.device``...) otherwise. Every stage's check. A device type other
    than cpu and cuda counts where torch's module of that name says it is available (``torch.xpu``,
    ``torch.mps``); ``meta`` holds no values and never is. ``mps`` (Apple's GPUs) is
    ``torch.backends.mps.is_available()``, and only for a stage that needs no ``float64`` on its device
    (the harvest; training and analysis keep sums and thresholds in float64, which MPS lacks)."""
    if name == "auto":
        return
    import torch  # here, not at the top: a config loads without torch

    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{where}: not a torch device: {name!r} ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}={name}, but this torch ({torch.__version__}) sees no CUDA device; use "
                          "'auto' or 'cpu'")
    if dev.type == "mps":
        return _check_mps(name, where, float64, torch)
    available = getattr(getattr(torch, dev.type, None), "is_available", None)
    if dev.type not in ("cpu", "cuda") and not (callable(available) and available()):
        raise ConfigError(f"{where}={name}, but this torch ({torch.__version__}) cannot compute on "
                          f"{dev.type!r} devices; use 'auto', 'cpu' or 'cuda'")


def _check_mps(name: str, where: str, float64: bool, torch) -> None:
    """``check_device`` for an MPS device: one this torch can use, for a stage that can run there."""
    mps = torch.backends.mps
    if not mps.is_available():
        why = ("it is built without MPS" if not mps.is_built() else
               "it finds no MPS device: that needs macOS 12.3 or later on Apple silicon or an AMD GPU")
        raise ConfigError(f"{where}={name}, but this torch ({torch.__version__}) cannot use MPS ({why}); use "
                          "'auto' or 'cpu'")
    if float64:
        raise ConfigError(f"{where}={name}: training and analysis keep sums and thresholds in float64, which "
                          "MPS devices lack; use 'cpu' here (harvest.device may be mps: the model's forward "
                          "runs there)")


def check_seed(seed: object, name: str) -> None:
    """A seed numpy's and torch's generators both take: an integer in [0, 2**63) (numpy takes no negative,
    torch nothing from 2**64); ConfigError naming ``name`` otherwise (a non-integer is the type check's)."""
    if isinstance(seed, int) and not 0 <= seed < 2**63:
        raise ConfigError(f"{name} must be an integer in [0, 2**63), got {seed}")


MAX_THREADS = 1024
"""The most torch threads a config may ask for (``threads``): more than one machine's cores; far more, torch
crashes (100,000: a segmentation fault; 2**64: an overflow)."""


def check_threads(n: object) -> None:
    """ConfigError unless ``n`` (``threads``) is in [0, MAX_THREADS] (a non-integer is the type check's)."""
    if isinstance(n, int) and not 0 <= n <= MAX_THREADS:
        raise ConfigError(f"threads must be >= 0 (0 = one per core) and at most {MAX_THREADS}, got {n}")


@dataclasses.dataclass(frozen=True)
class Common:
    """Top-level keys shared by every stage."""

    run_dir: str = "runs/default"
    """Folder for everything this experiment writes (store, checkpoints, report)."""
    seed: int = 0
    """Seed of every random choice: data order, splits, initialisation, sampling."""
    store: str = ""
    """Activation store path or fsspec URL; empty means ``{run_dir}/store``."""
    threads: int = 0
    """CPU threads of torch in every stage (0: torch's default, one per core). On a machine shared with other
    jobs, fewer threads than cores avoids oversubscription (two 2-thread jobs on 2 cores slowed the demo's
    training ~8x here)."""

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        check_threads(self.threads)
        if not self.run_dir.strip():  # Path('') is the current folder: the run's files spread over it
            raise ConfigError(f"run_dir is empty ({self.run_dir!r}; an unset variable in run_dir=$RUN?): "
                              "name the run's folder, e.g. run_dir=runs/x ('.' for the current folder)")
        # '~/x' is the home folder's x for every file of the run, as for fsspec, which opens the store there
        object.__setattr__(self, "run_dir", os.path.expanduser(self.run_dir))
        if "://" not in self.store:  # a local store's too (its locks; a store known by its path to training)
            object.__setattr__(self, "store", os.path.expanduser(self.store))
        if "://" in str(self.run_dir):  # Path() would make 's3://b/x' the local folder 's3:/b/x'
            raise ConfigError(f"run_dir must be a local folder (checkpoints, reports and locks are written "
                              f"there), got {self.run_dir!r}: only the store may be a URL (store=URL)")

    @property
    def store_path(self) -> str:
        return self.store or str(Path(self.run_dir) / "store")


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (plain data only), with YAML 1.2's floats: PyYAML follows YAML 1.1, where
    ``1e-3`` (no dot) is the string '1e-3', the way most people write a learning rate or a weight; and no
    key twice in one mapping, which YAML forbids and PyYAML reads as the last one (a second ``train:``
    section dropped the first's dictionaries). A merge key's (``<<: *base``) are overridden as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    said = f"the key {key.value!r} is given twice in one mapping (the first would be lost)"
                    raise yaml.constructor.ConstructorError(None, None, said, key.start_mark)
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(  # tried after the YAML 1.1 resolvers of the same first characters
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
_Loader.yaml_implicit_resolvers = {  # and no timestamps: `run_dir: 2026-12-05` is a folder name, not a date
    c: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:timestamp"]
    for c, rs in _Loader.yaml_implicit_resolvers.items()}


MAX_YAML_VALUES = 100_000
"""The most values a config may hold once its aliases are expanded (a real one holds a few hundred)."""


def safe_yaml(text: str, where: str = "YAML") -> Any:
    """``yaml.safe_load`` of ``text``, reading ``1e-3`` as a float (``_Loader``). Invalid YAML, a nesting
    deeper than Python's recursion limit, an alias inside itself (``&a [*a]``) and aliases that expand to
    more than ``MAX_YAML_VALUES`` values ("billion laughs": every later step copies the data expanded) are
    ConfigErrors naming ``where``."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
        expanded_size(data)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where} is not valid YAML: {e.problem or e.context}{at}") from e
    except RecursionError as e:
        raise ConfigError(f"{where} is nested too deeply to be a config") from e
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{where} is not a config: {e}") from e
    return data


def expanded_size(data: Any) -> int:
    """How many values ``data`` (loaded YAML) holds with its aliases expanded, counted without expanding
    them; ValueError for an alias that contains itself, more than ``MAX_YAML_VALUES`` values, or a value that
    is no JSON (bytes, a date, a set: explicit tags)."""
    sizes: dict[int, int] = {}  # id of a list or mapping -> its size; -1 while it is being counted

    def size(x: Any) -> int:
        if not isinstance(x, dict | list):
            if x is not None and not isinstance(x, str | int | float):  # !!binary, !!timestamp, !!set
                raise ValueError(f"it holds a {type(x).__name__} ({str(x)[:40]!r}: a tag such as !!binary, "
                                 "!!timestamp, !!set), where a config holds text, numbers, true/false, null, "
                                 "lists and mappings")
            return 1
        for k in x if isinstance(x, dict) else ():  # a key too: `!!timestamp 2026-12-05: x`
            size(k)
        if sizes.get(id(x)) == -1:
            raise ValueError("an alias refers to a value that contains it (a loop)")
        if id(x) not in sizes:
            sizes[id(x)] = -1
            sizes[id(x)] = 1 + sum(size(v) for v in (x.values() if isinstance(x, dict) else x))
            if sizes[id(x)] > MAX_YAML_VALUES:
                raise ValueError(f"its aliases expand to more than {MAX_YAML_VALUES:,} values")
        return sizes[id(x)]

    return size(data)


def shipped_config(name: str) -> Path | None:
    """The config file ``name`` (``demo.yaml``) that ships with actdict (``configs/`` of the repository,
    installed as the package ``actdict.configs``), or None. An installed actdict has no ``configs/`` folder
    beside the user's work: a config path not found, spelled as the README spells these, names this copy."""
    try:
        found = importlib.resources.files("actdict.configs") / name
    except ModuleNotFoundError:  # an editable install made before configs/ became a package
        return None
    return Path(str(found)) if name.endswith(".yaml") and found.is_file() else None


def missing_config(p: Path) -> str:
    """The error of a config path ``p`` that is not a file: with the shipped config of that name, if any,
    where ``p`` is spelled as the README spells the shipped ones (``configs/demo.yaml``, or a bare name):
    another folder's ``demo.yaml`` (``/work/exp/demo.yaml``) is the user's own, not actdict's."""
    if p.parent.name not in ("", "configs") or (shipped := shipped_config(p.name)) is None:
        return f"config file not found: {p}"
    return (f"config file not found: {p}; actdict ships {p.name} as {shipped}: give that path (its relative "
            "paths, such as run_dir, are then under this folder), or copy it here to edit it")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping with ``safe_yaml``; a missing file, one that is not UTF-8 text or not YAML, or a
    non-mapping is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(missing_config(p))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text ({e})") from e
    data = safe_yaml(text, str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (value parsed as YAML). An item of a
    list of named mappings is picked by its name or index: ``train.dicts.vaease.k=512``,
    ``train.dicts.0.params.lam1=0.1``."""
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                nxt = _list_item(node, part, item)
            elif (nxt := node.get(part)) is None:  # absent, or an empty section (`analyze:` in the YAML)
                nxt = node[part] = {}
            if not isinstance(nxt, dict | list):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a section")
            node = nxt
        if isinstance(node, list) and not any(isinstance(x, dict) for x in node):  # a list of values
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:-1])} is a list of values: set the whole "
                              f"list ({'.'.join(parts[:-1])}=[...])")
        if isinstance(node, list):
            raise ConfigError(f"override {item!r}: set a field of a list item ({key}.FIELD=...), or the "
                              f"whole list ({'.'.join(parts[:-1])}=[...])")
        node[parts[-1]] = safe_yaml(raw, f"override {item!r}") if raw.strip() else ""
        if comment := dropped_comment(raw):  # valid YAML (safe_yaml): composes without an error
            raise ConfigError(f"override {item!r}: YAML reads {comment!r} as a comment and drops it: quote a "
                              f"value that holds ' #' ({key}='\"{raw.strip()}\"'), or leave the comment out")
    return out


def dropped_comment(raw: str) -> str:
    """The comment YAML would drop from an override's value ('runs/exp #3' is read as 'runs/exp': a ' #'
    starts one), or ''."""
    node = yaml.compose(raw, Loader=_Loader)
    return raw[node.end_mark.index if node is not None else 0:].strip()


def _list_item(items: list, part: str, item: str) -> Any:
    """The element of ``items`` that override path component ``part`` names: an index, or a ``name``."""
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    for x in items:
        if isinstance(x, dict) and x.get("name") == part:
            return x
    names = [x.get("name") for x in items if isinstance(x, dict)]
    swept = [n for x in items if isinstance(x, dict) and x.get("sweep")
             and isinstance(n := x.get("name"), str) and part.startswith(f"{n}_")]  # cut at a value's '.'
    dotted = [i for i, x in enumerate(items) if isinstance(x, dict) and isinstance(n := x.get("name"), str)
              and n.startswith(f"{part}.")]  # the override's key was cut at the name's '.'
    hint = (f"; the dictionaries of a sweep are set through its item (train.dicts.{swept[0]}.FIELD=...) or "
            "its sweep" if swept else f"; a name holding '.' is set by its index ({dotted[0]})" if dotted
            else "")
    raise ConfigError(f"override {item!r}: no list item {part!r} (give an index < {len(items)} or a name: "
                      f"{names}){hint}")


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and checking types."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    if (prepare := getattr(cls, "prepare", None)) is not None:  # a class's own rewriting of its data first
        data = prepare(data, where)  # (TrainConfig: each dictionary's ``sweep`` expanded)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    return cls(**kwargs)


def _item_label(value: Any, i: int) -> str | int:
    """How an error names a list item: by its ``name`` (train.dicts, whose sweeps renumber the items), else
    by its index."""
    return value["name"] if isinstance(value, dict) and isinstance(value.get("name"), str) else i


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        options = [a for a in args if a is not type(None)]
        for arg in options:
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(options) == 1:  # `int | None`: the int's message, with null named beside it
            said = rf": expected \1{' or null' if type(None) in args else ''}, got "
            raise ConfigError(re.sub(r": expected (.+?), got ", said, errors[0], count=1))
        raise ConfigError(f"{where}: {value!r} matches none of {args}: {errors}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{where}[{_item_label(v, i)}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool | int | float) or value is None:  # `run_dir: no`, `name: on`, `store: 1e3`
            raise ConfigError(f"{where}: expected a string, got {value!r}: YAML reads an unquoted yes, no, "
                              "on, off, true, false, null, ~, nothing or a number as such; quote the text "
                              "(e.g. \"no\")")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read an experiment YAML, apply overrides and check its top-level keys."""
    data = apply_overrides(read_yaml(path), overrides or [])
    common_keys = {f.name for f in dataclasses.fields(Common)}
    unknown = sorted(set(data) - common_keys - set(STAGES))
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {unknown}; valid: {sorted(common_keys | set(STAGES))}"
        )
    return data


def common_of(data: dict[str, Any]) -> Common:
    return build(Common, {k: v for k, v in data.items() if k not in STAGES}, "config")


def section(data: dict[str, Any], stage: str, cls: type[T]) -> T:
    """The typed config of one stage (its section may be absent or empty: all defaults; anything else but a
    mapping is refused by ``build``, not read as an empty section)."""
    return build(cls, data.get(stage), stage)


def device_said(device: object) -> str:
    """A device as a stage's start line says it: a CPU with torch's thread count (``cpu, 16 threads``), since
    torch takes every core of the machine by default, also under a scheduler that gave the job fewer (set
    ``threads`` then), and a log that lacks it cannot tell an oversubscribed run from a slow one."""
    import torch

    name = str(device)
    if name.split(":")[0] != "cpu":
        return name
    n = torch.get_num_threads()
    return f"{name}, {n} thread{'s' if n != 1 else ''}"
