"""Reading an experiment YAML and its overrides: every shipped config, keys, types, quoting, hostile YAML."""

from pathlib import Path

import pytest

from actdict.cli import _STAGES
from actdict.config import ConfigError, build, common_of, load_experiment, section
from tests.configs_helpers import _stage_cls

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path):
    data = load_experiment(path)
    common = common_of(data)
    assert common.run_dir
    present = [s for s in _STAGES if s in data]
    assert present, f"{path.name} has no stage section"
    for stage in present:
        cfg = section(data, stage, _stage_cls(stage))
        assert type(cfg).__name__.endswith("Config")
    if "train" in data:  # every dictionary's variant and params build (what `actdict run` checks first)
        from actdict.train.precheck import check

        check(common, section(data, "train", _stage_cls("train")))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "pythia70m_pile10k.yaml"} <= names


def test_unknown_keys_rejected(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run_dir: x\nhravest: {}\n")
    with pytest.raises(ConfigError, match="hravest"):
        load_experiment(p)
    p.write_text("run_dir: x\nharvest:\n  modle: foo\n")
    data = load_experiment(p)
    with pytest.raises(ConfigError, match="modle.*valid keys"):
        section(data, "harvest", _stage_cls("harvest"))


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\nseed: 1\n")
    data = load_experiment(p, ["seed=7", "store=/tmp/s"])
    common = common_of(data)
    assert (common.seed, common.store_path) == (7, "/tmp/s")
    with pytest.raises(ConfigError, match="expected an integer"):
        common_of(load_experiment(p, ["seed=abc"]))
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_experiment(p, ["seed"])
    assert common_of(load_experiment(p)).store_path == "x/store"


def test_overrides_reach_list_items_by_name_or_index():
    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    data = load_experiment(demo, ["train.dicts.vaease.k=512", "train.dicts.1.params.lam1=0.5",
                                  "train.dicts.sae_l1.params.new_key=1"])
    dicts = {d["name"]: d for d in data["train"]["dicts"]}
    assert dicts["vaease"]["k"] == 512 and dicts["sae_l1"]["k"] == 384  # only the named item
    assert dicts["sae_l1"]["params"] == {"lam1": 0.5, "lam2": 0.2, "new_key": 1}
    assert load_experiment(demo)["train"]["dicts"][0]["k"] == 384  # the file is untouched
    with pytest.raises(ConfigError, match=r"no list item 'vae' \(give an index < 2 or a name: \['vaease', "):
        load_experiment(demo, ["train.dicts.vae.k=1"])
    with pytest.raises(ConfigError, match=r"set a field of a list item \(train.dicts.0.FIELD=...\)"):
        load_experiment(demo, ["train.dicts.0=1"])
    with pytest.raises(ConfigError, match="'train.epochs' is not a section"):
        load_experiment(demo, ["train.epochs.x=1"])


def test_build_nested_and_missing():
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Inner:
        a: int
        b: float = 1.0

    @dataclass(frozen=True)
    class Outer:
        inner: Inner
        items: list[Inner] = field(default_factory=list)
        name: str | None = None

    out = build(Outer, {"inner": {"a": 1, "b": 2}, "items": [{"a": 3}]})
    assert out.inner == Inner(1, 2.0) and out.items == [Inner(3, 1.0)] and out.name is None
    assert isinstance(out.inner.b, float)
    with pytest.raises(ConfigError, match="missing required key"):
        build(Outer, {"inner": {}})
    with pytest.raises(ConfigError, match=r"items\[0\]: unknown key\(s\) \[.c.\]"):
        build(Outer, {"inner": {"a": 1}, "items": [{"a": 1, "c": 2}]})


def test_exponents_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; a config reads it as the number everyone means."""
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\ntrain:\n  eta_min: 1e-7\n  dicts: [{name: a, variant: sae_l1, lr: 1e-3, "
                 "params: {lam1: 2E-2}}]\n")
    data = load_experiment(p, ["train.dicts.a.params.lam2=-5e-1", "train.grad_clip=1e0"])
    train = section(data, "train", _stage_cls("train"))
    assert (train.eta_min, train.grad_clip, train.dicts[0].lr) == (1e-7, 1.0, 1e-3)
    assert train.dicts[0].params == {"lam1": 0.02, "lam2": -0.5}
    assert load_experiment(p, ["run_dir=1e3x", "store='1e3'"])["store"] == "1e3"  # quoted: a string


def test_dates_empty_sections_and_seeds_are_read_as_meant(tmp_path):
    """A date-like value (`run_dir: 2026-12-05`) is a string, not a datetime that crashed the overrides' copy
    with a TypeError; an empty section (`analyze:`) takes dotted overrides like an absent one; a seed
    numpy or torch cannot take (negative, >= 2**63) is a config error, not a traceback in the train stage."""
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: 2026-12-05\nanalyze:\ntrain:\n  dicts: [{name: 2026-12-06, variant: sae_l1}]\n")
    data = load_experiment(p, ["analyze.context=0", "store=2026-12-07"])
    assert (common_of(data).run_dir, common_of(data).store) == ("2026-12-05", "2026-12-07")
    assert section(data, "analyze", _stage_cls("analyze")).context == 0
    assert section(data, "train", _stage_cls("train")).dicts[0].name == "2026-12-06"
    for bad in ("seed=-1", f"seed={2**63}"):
        with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            common_of(load_experiment(p, [bad]))
    for bad in ("harvest.source.shuffle_seed=-1", f"harvest.source.shuffle_seed={2**64}"):  # -1: 1's order
        with pytest.raises(ConfigError, match=r"^harvest.source.shuffle_seed must be an integer in \[0, "):
            section(load_experiment(p, [bad]), "harvest", _stage_cls("harvest"))
    for bad in ("train.dicts.0.seed=-1", f"train.dicts.0.seed={2**64}"):
        with pytest.raises(ConfigError, match=r"train.dicts\[2026-12-06\].seed must be an integer in \[0, 2"):
            section(load_experiment(p, [bad]), "train", _stage_cls("train"))


def test_an_override_whose_value_yaml_cuts_at_a_comment_is_refused(tmp_path):
    """`run_dir="my runs/exp #3"` (the shell drops the quotes) was the folder 'my runs/exp': YAML reads ' #3'
    as a comment. It is refused, saying how to quote it; '#' inside a word or a quoted value is kept."""
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\n")
    said = r"""override 'run_dir=my runs/exp #3': YAML reads '#3' as a comment and drops it: quote a value """
    with pytest.raises(ConfigError, match=said + r"""that holds ' #' \(run_dir='"my runs/exp #3"'\)"""):
        load_experiment(p, ["run_dir=my runs/exp #3"])
    with pytest.raises(ConfigError, match=r"reads '# two' as a comment"):
        load_experiment(p, ["seed=2 # two"])
    assert common_of(load_experiment(p, ['run_dir="my runs/exp #3"'])).run_dir == "my runs/exp #3"
    assert common_of(load_experiment(p, ["run_dir=data#3 "])).run_dir == "data#3"


def test_an_empty_run_dir_is_refused(tmp_path, monkeypatch):
    """`run_dir=$RUN` with RUN unset (or `run_dir: ""`) ran in the current folder: its store, dicts/, logs/,
    report.html and summary.json spread over it. It is a config error now, before anything is written."""
    from actdict.cli import main

    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\ntrain: {dicts: [{name: a, variant: sae_l1, k: 4}]}\n")
    for override in ("run_dir=", "run_dir= ", 'run_dir=""'):
        with pytest.raises(ConfigError, match=r"run_dir is empty \('.*'; an unset variable in run_dir=\$RUN"):
            common_of(load_experiment(p, [override]))
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(p), "run_dir="]) == 2
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.yaml"]
    assert common_of(load_experiment(p, ["run_dir=."])).store_path == "store"


@pytest.mark.parametrize("text, got", [("run_dir: no", "False"), ("store: 1e3", "1000.0"),
                                       ("run_dir: ~", "None"),
                                       ("train: {dicts: [{name: on, variant: sae_l1}]}", "True")])
def test_a_string_that_yaml_reads_as_another_type_says_to_quote_it(tmp_path, text, got):
    """A folder or dictionary named `no`, `on`, `1e3` or `~` was refused as 'expected a string, got False'
    (the user wrote no false): the error says that YAML read it so and to quote it."""
    from actdict.train.config import TrainConfig

    (tmp_path / "c.yaml").write_text(text + "\n")
    said = r"YAML reads an unquoted yes, no, on, off, true, false, null, ~, nothing or a number as such"
    with pytest.raises(ConfigError, match=rf"expected a string, got {got}: {said}; quote the text"):
        data = load_experiment(tmp_path / "c.yaml")
        common_of(data), section(data, "train", TrainConfig)


def test_override_values_edge_cases_and_list_bounds(tmp_path):
    """The value is everything after the first '=' (parsed as YAML; nothing after it is the empty string); an
    index one past the end of a list is a config error naming the valid ones, not an IndexError; the data
    given to ``apply_overrides`` is left as it was (a copy is returned); an empty file is all defaults."""
    from actdict.config import apply_overrides

    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\nstore: s\n")
    assert common_of(load_experiment(p, ["store=s3://b/acts?v=1"])).store == "s3://b/acts?v=1"
    assert common_of(load_experiment(p, ["store="])).store_path == "x/store"  # '' is the default, not null
    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    with pytest.raises(ConfigError, match=r"no list item '2' \(give an index < 2"):
        load_experiment(demo, ["train.dicts.2.k=1"])
    dotted = {"train": {"dicts": [{"name": "a"}, {"name": "l1.v2"}]}}  # the key is cut at the name's '.'
    with pytest.raises(ConfigError, match=r"no list item 'l1' .*\['a', 'l1.v2'\]\); a name holding '.' is "
                                          r"set by its index \(1\)$"):
        apply_overrides(dotted, ["train.dicts.l1.v2.lr=0.1"])
    by_index = apply_overrides(dotted, ["train.dicts.1.lr=0.1"])["train"]["dicts"]
    assert by_index[1] == {"name": "l1.v2", "lr": 0.1}
    said = r"^override 'harvest.hooks.0=x': harvest.hooks is a list of values: set the whole list \(harvest"
    with pytest.raises(ConfigError, match=said):  # was: '... (harvest.hooks.0.FIELD=...)'
        load_experiment(demo, ["harvest.hooks.0=x"])
    data = {"train": {"dicts": [{"name": "a", "k": 1}]}}
    out = apply_overrides(data, ["train.dicts.a.k=2", "seed=3"])
    assert out == {"train": {"dicts": [{"name": "a", "k": 2}]}, "seed": 3}
    assert data == {"train": {"dicts": [{"name": "a", "k": 1}]}}
    p.write_text("")
    assert common_of(load_experiment(p)) == common_of({})
    p.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping, got int"):
        load_experiment(p)


def test_types_are_checked_strictly(tmp_path):
    """true/false is no integer and no number; a Literal takes only its values; a tuple field gets a tuple; an
    optional field's message names null beside its type; a section that is empty but no mapping (`train:
    []`) is refused, not read as all defaults."""
    from dataclasses import dataclass
    from typing import Literal

    @dataclass(frozen=True)
    class Typed:
        n: int = 0
        x: float = 0.0
        mode: Literal["a", "b"] = "a"
        pair: tuple[int, ...] = ()

    assert build(Typed, {"n": 2, "x": 1, "mode": "b", "pair": [1, 2]}) == Typed(2, 1.0, "b", (1, 2))
    for bad, message in (({"n": True}, "Typed.n: expected an integer"),
                         ({"x": False}, "Typed.x: expected a number"),
                         ({"mode": "c"}, r"Typed.mode: 'c' is not one of \['a', 'b'\]")):
        with pytest.raises(ConfigError, match=message):
            build(Typed, bad)
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\n")
    with pytest.raises(ConfigError, match="seed: expected an integer, got True"):
        common_of(load_experiment(p, ["seed=true"]))
    with pytest.raises(ConfigError, match="harvest.mode: 'token' is not one of"):
        section(load_experiment(p, ["harvest.mode=token"]), "harvest", _stage_cls("harvest"))
    with pytest.raises(ConfigError, match="harvest: expected a mapping, got int"):
        section(load_experiment(p, ["harvest=3"]), "harvest", _stage_cls("harvest"))
    with pytest.raises(ConfigError, match=r"^harvest.max_tokens: expected an integer or null, got 100000.0$"):
        section(load_experiment(p, ["harvest.max_tokens=1e5"]), "harvest", _stage_cls("harvest"))  # was
    with pytest.raises(ConfigError, match=r"^train.dicts\[a\].seed: expected an integer or null, got 'x'$"):
        section(load_experiment(p, ["train.dicts=[{name: a, variant: vae, seed: x}]"]), "train",
                _stage_cls("train"))  # "'x' matches none of (<class 'int'>, <class 'NoneType'>): [...]"
    for empty, got in (("train=[]", "list"), ("analyze=false", "bool"), ("harvest=", "str")):  # were defaults
        stage = empty.split("=")[0]
        with pytest.raises(ConfigError, match=f"^{stage}: expected a mapping, got {got}$"):
            section(load_experiment(p, [empty]), stage, _stage_cls(stage))
    assert section(load_experiment(p, ["train=null"]), "train", _stage_cls("train")).epochs == 35


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(  # 10**6 values
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True))


@pytest.mark.parametrize(("text", "override", "message"), [
    (LAUGHS, None, r"c.yaml is not a config: its aliases expand to more than 100,000 values"),
    ("run_dir: &x [*x]\n", None, r"c.yaml is not a config: an alias refers to a value that contains it"),
    ("run_dir: " + "[" * 5000 + "]" * 5000 + "\n", None, r"c.yaml is nested too deeply to be a config"),
    ("run_dir: [\n", None, r"c.yaml is not valid YAML: expected the node content, but found '<stream end>' "
                           r"\(line 2, column 1\)"),
    ("seed: 1\n", "train.dicts=&d [*d]", r"override 'train.dicts=&d \[\*d\]' is not a config: an alias"),
    ("seed: 1\n", "seed=[", r"override 'seed=\[' is not valid YAML"),
    ("run_dir: !!binary aGk=\n", None, r"c.yaml is not a config: it holds a bytes \(\"b'hi'\": a tag such "),
    ("!!timestamp 2026-12-05: x\n", None, r"c.yaml is not a config: it holds a date \('2026-12-05': a tag "),
    ("seed: 1\n", "run_dir=!!set {a}", r"override 'run_dir=!!set {a}' is not a config: it holds a set"),
    ("train:\n  dicts: [{name: a, variant: vae}]\ntrain:\n  epochs: 2\n", None,  # was the default dictionary
     r"/c.yaml is not valid YAML: the key 'train' is given twice in one mapping \(the first would be lost\) "
     r"\(line 3, column 1\)$"),
    ("seed: 1\n", "train.dicts=[{name: a, variant: vae, name: b}]", r"^override .* 'name' is given twice"),
])
def test_a_hostile_or_broken_yaml_is_a_config_error_before_any_copy(tmp_path, text, override, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiment(tmp_path / "c.yaml", [override] if override else [])


def test_a_merge_key_still_overrides_the_keys_it_brings(tmp_path):
    """Keys given twice are refused, but a merge key's (`<<: *base`) are the mapping's to override."""
    (tmp_path / "c.yaml").write_text("train:\n  dicts:\n    - &base {name: a, variant: sae_l1, k: 8}\n"
                                     "    - {<<: *base, name: b, k: 16}\n")
    dicts = section(load_experiment(tmp_path / "c.yaml"), "train", _stage_cls("train")).dicts
    assert [(dc.name, dc.variant, dc.k) for dc in dicts] == [("a", "sae_l1", 8), ("b", "sae_l1", 16)]


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"run_dir: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not UTF-8 text"):
        load_experiment(tmp_path / "c.yaml")


def test_every_shipped_config_on_the_demo_store_has_the_demos_harvest():
    """A config that names the demo's store (configs/, docs/results/: demo_sweep.yaml, the Gated SAE
    sweeps) harvests it as configs/demo.yaml does: else, after the demo, it is refused as another config
    (the Gated SAE configs still said dtype bfloat16 when the demo's forward became float32)."""
    from actdict.config_data import config_hash
    from actdict.harvest.config import HarvestConfig

    root = Path(__file__).parents[1]
    demo = config_hash(section(load_experiment(root / "configs/demo.yaml"), "harvest", HarvestConfig))
    on_it = {}
    for path in [*CONFIGS, *sorted((root / "docs").rglob("*.yaml"))]:
        data = load_experiment(path)
        if common_of(data).store_path == "runs/demo/store" and "harvest" in data:
            on_it[path.relative_to(root).as_posix()] = config_hash(section(data, "harvest", HarvestConfig))
    assert len(on_it) >= 4 and {p: h for p, h in on_it.items() if h != demo} == {}
