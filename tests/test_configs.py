"""Every shipped experiment YAML loads into the typed stage configs; bad keys are rejected."""

from pathlib import Path

import numpy as np
import pytest

from actdict.cli import _STAGES
from actdict.config import ConfigError, build, common_of, load_experiment, section

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def _stage_cls(stage):
    import importlib

    _, mod, cls = _STAGES[stage]
    return getattr(importlib.import_module(mod), cls)


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
        from actdict.train.run import check

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


def test_threads_key_sets_torch_threads(tmp_path):
    """``threads: N`` (top level) sets torch's intra-op threads before a stage runs; 0 leaves the default; a
    count torch cannot make is refused with the config, before any stage."""
    import torch

    from actdict.cli import set_threads

    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\nthreads: 1\n")
    assert common_of(load_experiment(p)).threads == 1
    assert common_of(load_experiment(p, ["threads=0"])).threads == 0
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        set_threads(0)
        assert torch.get_num_threads() == 2
        set_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="threads must be >= 0"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)
    for bad in ("threads=-1", "threads=100000", f"threads={2**64}"):  # a segfault, an OverflowError in torch
        with pytest.raises(ConfigError, match=r"^threads must be >= 0 \(0 = one per core\) and at most 1024"):
            common_of(load_experiment(p, [bad]))
    assert common_of(load_experiment(p, ["threads=1024"])).threads == 1024


def test_importing_actdict_puts_large_tensors_on_huge_pages():
    """``import actdict`` before torch turns on torch's THP allocations (page-aligned, madvise'd large
    tensors); the user's THP_MEM_ALLOC_ENABLE=0 wins. Checked in fresh interpreters, where the allocator has
    not yet read the variable."""
    import os
    import subprocess
    import sys

    code = ("import actdict, torch; xs = [torch.empty(8 << 20, dtype=torch.uint8) for _ in range(3)]; "
            "print(*[x.data_ptr() % 4096 for x in xs])")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def offsets(extra: dict) -> list[int]:
        out = subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True,
                             check=True).stdout
        return [int(v) for v in out.split()]

    assert offsets({}) == [0, 0, 0]
    assert any(offsets({"THP_MEM_ALLOC_ENABLE": "0"}))  # torch's default 64-byte alignment


_SAE_TOPK = "[{name: a, variant: sae_topk, k: 8, params: {topk: %s}}]"


@pytest.mark.parametrize("dicts, more, message", [
    (_SAE_TOPK % 9, [], r"train.dicts\[a\]: sae_topk: topk must be"),
    (_SAE_TOPK % "ten", [], r"train.dicts\[a\]: sae_topk: topk must be an integer, got .ten."),
    ("[{name: a, variant: vaease, params: {lam1: 1}}]", [], r"vaease: unknown params \[.lam1.\]"),
    ("[{name: a, variant: vaeaes}]", [], r"train.dicts\[a\]: unknown dictionary variant 'vaeaes'"),
    ("[{name: a, variant: vae}, {name: a, variant: vaease}]", [], "unique names"),
    ("[{name: a, variant: vae}]", ["analyze.dicts=[a, b]"], r"analyze.dicts names \['b'\], which"),
    ("[{name: a, variant: vae}]", ["analyze.labels=no.npy"], "analyze.labels: no.npy not found"),
    ("[{name: a, variant: vae}]", ["train.device=gpu"], "train.device: not a torch device: 'gpu'"),
    ("[{name: a, variant: vae}]", ["analyze.device=cuda:x"], "analyze.device: not a torch device"),
    ("[{name: a, variant: vae}]", ["train.device=meta"], r"train.device=meta, but .* compute on 'meta'"),
    ("[{name: a, variant: vae}]", ["analyze.device=meta"], r"analyze.device=meta, but .* on 'meta' devices"),
    ("[{name: a, variant: vae}]", ["harvest.source.shuffle_buffer=-5"], r"shuffle_buffer must be >= 0"),
    ("[{name: a, variant: vae}]", ["harvest.source.path=corpus/"],  # was the demo corpus, harvested
     r"harvest.source.path is set \('corpus/'\) but source.kind='debian' does not read it: set harvest.source"
     r".kind=files, or leave path out"),
    ("[{name: a, variant: vae}]", ["harvest.vectors.path=x.npy"],  # was the demo corpus too
     r"harvest.vectors is set \(\{'path': 'x.npy'\}\) but harvest.mode='tokens' does not read it: set "
     r"harvest.mode=vectors, or leave vectors out"),
    ("[{name: a, variant: sae_l1, k: 1000000000000000000}]", [],  # a traceback (RuntimeError), then
     r"train.dicts\[a\]: sae_l1: a dictionary of k=1000000000000000000 latents is too large to build here \("
     r"torch: Storage size calculation overflowed"),
    (f"[{{name: a, variant: vae, k: {10**20}}}]", [],  # 'bad params {}' and torch's C++ stack
     r"train.dicts\[a\]: vae: a dictionary of k=100000000000000000000 latents is too large to build here"),
    ("[{name: a, variant: vae}]", ["harvest.source.max_docs=0"], r"max_docs must be >= 1 or null, got 0"),
    ("[{name: a, variant: vae}]", ["train.t0=0"], r"train.t0 must be >= 1, got 0"),  # looped for ever
    ("[{name: a, variant: vae}]", ["train.batch_size=0"], r"train.batch_size must be >= 1, got 0"),
    ("[{name: a, variant: vae}]", ["train.test_fraction=1"], r"train.test_fraction must be in \[0, 1\)"),
    ("[{name: a, variant: vae}]", ["train.grad_clip=-1"], r"train.grad_clip must be a number >= 0"),
    ("[{name: a, variant: vae}, {name: b, variant: vae, lr: 0}]", ["train.eta_min=0.5"],  # lr rose to 0.5
     r"train.eta_min=0.5 is above the lr of \['a'\]: the cosine_restarts schedule would raise their learning "
     r"rate to it, not decay it; set train.eta_min below every lr"),
    ("[{name: a, variant: vae, k: 0}]", [], r"train.dicts\[a\].k must be >= 1, got 0"),
    ("[{name: a, variant: vae, lr: -0.1}]", [], r"train.dicts\[a\].lr must be a number >= 0"),
    ("[{name: a_k-8, variant: vae}, {name: a, variant: vae, sweep: {k: [8, 9]}}]", [],
     r"unique names, got \['a_k-8', 'a_k-8', 'a_k-9'\]"),  # a sweep's name taken by another dictionary
    ("[{name: a, variant: sae_l1, sweep: {params: {lam1: [0.1, -1]}}}]", [],
     r"sae_l1: lam1 is a loss weight and must be a finite number >= 0, got -1"),  # each swept dict checked
    ("[{name: a, variant: vae}]", ["train.hook=blocks.2.hook_resid_post"],
     r"train.hook='blocks.2.hook_resid_post' is not among the hooks the harvest writes \(\['blocks.3"),
])
def test_run_rejects_a_bad_section_before_the_harvest(tmp_path, capsys, dicts, more, message):
    """`actdict run` checks every stage's section first: a bad dictionary or analysis setting stops it
    before the harvest writes anything (the harvest section itself is valid: the demo's, on a tiny corpus)."""
    import re

    from actdict.cli import main

    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    run_dir = tmp_path / "run"
    rc = main(["run", str(demo), f"run_dir={run_dir}", "harvest.max_tokens=512", f"train.dicts={dicts}",
               *more])
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not run_dir.exists()  # the harvest never started


def test_a_dictionary_too_large_for_memory_is_named_when_training_builds_it():
    """The train stage's own build (the store's d known; check's is on the meta device, which allocates
    nothing) names the dictionary whose k is beyond memory or torch's sizes, as check does."""
    import torch

    from actdict.train.config import DictConfig
    from actdict.train.run import member

    dc = DictConfig(name="big", variant="sae_l1", k=10**18)
    with pytest.raises(ConfigError, match=r"^train.dicts\[big\]: sae_l1: a dictionary of k=10+ latents is "
                                          r"too large to build here \(torch: Storage size calculation"):
        member(dc, 16, 0, None, torch.device("cpu"))


def test_a_cuda_device_without_cuda_is_a_config_error():
    """... and a device torch names but cannot compute on here (meta: no values; mps on Linux) too: it was
    accepted, and the stage failed with a traceback at its first tensor."""
    import torch

    from actdict.config import check_device

    check_device("cpu", "train.device")
    check_device("cpu:0", "train.device")
    check_device("auto", "train.device")
    with pytest.raises(ConfigError, match=r"^harvest.device=meta, but this torch .* cannot compute on 'meta' "
                                          r"devices; use 'auto', 'cpu' or 'cuda'$"):
        check_device("meta", "harvest.device")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match=r"--device=mps, but .* cannot compute on 'mps' devices"):
            check_device("mps", "--device")
    if torch.cuda.is_available():
        check_device("cuda:0", "train.device")
    else:
        with pytest.raises(ConfigError, match=r"train.device=cuda:1, but this torch .* sees no CUDA device"):
            check_device("cuda:1", "train.device")


def test_progress_bars_redraw_rarely_into_a_log_file(monkeypatch):
    import io
    import sys

    from actdict.config import LOG_BAR_INTERVAL, bar_timing

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: every 30 s, not ten times a second
    assert bar_timing() == {"mininterval": 30.0, "maxinterval": 30.0} and LOG_BAR_INTERVAL == 30.0
    monkeypatch.setattr(sys, "stderr", Tty())
    assert bar_timing() == {"mininterval": 0.1, "maxinterval": 10.0}  # tqdm's defaults
    monkeypatch.setenv("TQDM_MININTERVAL", "2")
    assert bar_timing() == {"mininterval": 2.0, "maxinterval": 10.0}


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


def test_the_variant_field_lists_every_registered_variant():
    """DictConfig.variant's docstring (what a reader of train/config.py sees) names every registered variant;
    it listed five of the twelve."""
    import ast
    import re

    import actdict.train.config as train_config
    from actdict.train.protocol import registry

    tree = ast.parse(Path(train_config.__file__).read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DictConfig").body
    i = next(i for i, n in enumerate(body) if isinstance(n, ast.AnnAssign) and n.target.id == "variant")
    doc = body[i + 1].value.value
    listed = set(re.findall(r"\b(?:vae|vaease|lse|sosae|sae_\w+)\b", doc))
    assert listed == set(registry()) and len(listed) == 12, sorted(set(registry()) ^ listed)


def test_an_object_store_failure_is_one_line(monkeypatch, capsys):
    """No credentials (a botocore error, here a stand-in from its module) deep in a stage's chain: one line
    naming what to check, exit status 2; any other exception keeps its traceback."""
    from actdict import cli

    creds = type("NoCredentialsError", (Exception,), {"__module__": "botocore.exceptions"})

    def fails(argv):
        try:
            raise creds("Unable to locate credentials")
        except Exception as e:
            raise OSError("listing s3://bucket/store failed") from e

    tool = type("tool", (), {"main": staticmethod(fails)})
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: tool)
    assert cli.main(["store", "s3://bucket/store"]) == 2
    err = capsys.readouterr().err
    assert "the object store failed: NoCredentialsError: Unable to locate credentials; check" in err
    assert "AWS_ENDPOINT_URL" in err
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: type("m", (), {"main": staticmethod(lambda a: 1 / 0)}))
    with pytest.raises(ZeroDivisionError):
        cli.main(["store", "x"])


def test_a_rank_that_lost_its_peer_says_so_in_one_line(monkeypatch, capsys):
    from actdict import cli

    def peer_died(argv):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:43671: Connection "
                           "reset by peer\nmore lines")

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: type("t", (), {"main": peer_died}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["store", "x"]) == 2
    assert "another rank of this torchrun run failed ([../gloo/" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: not a peer's death, the traceback stays
    with pytest.raises(RuntimeError):
        cli.main(["store", "x"])


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


def test_run_checks_the_split_the_vectors_and_the_dictionaries_it_analyzes(tmp_path):
    """What only `run` checks: a vectors file of one chunk (n == chunk_rows) has none to hold out; a run
    without analysis may hold none out (test_fraction=0); analysis may name a dictionary this run does not
    train when the run folder already holds it; a run_dir that is a file, and a train.hook a vectors harvest
    does not write, are refused before the harvest."""
    import numpy as np

    from actdict.cli import check_run
    from actdict.config import STAGES

    np.save(tmp_path / "v.npy", np.zeros((64, 3), np.float32))
    p = tmp_path / "c.yaml"
    p.write_text(f"run_dir: {tmp_path / 'run'}\n"
                 f"harvest: {{mode: vectors, vectors: {{path: {tmp_path / 'v.npy'}}}, chunk_rows: 64, "
                 "shard_rows: 64}\ntrain: {test_fraction: 0.25, dicts: [{name: a, variant: vae}]}\n"
                 "analyze: {}\n")

    def check(*overrides, drop=()):
        data = {k: v for k, v in load_experiment(p, list(overrides)).items() if k not in drop}
        check_run(data, {s: section(data, s, _stage_cls(s)) for s in STAGES if s in data})

    with pytest.raises(ConfigError, match=r"holds 64 vectors: one chunk of harvest.chunk_rows=64.*=8 "):
        check()
    check("harvest.chunk_rows=32", "harvest.shard_rows=32")  # 2 chunks: one can be held out
    with pytest.raises(ConfigError, match="train.test_fraction=0 holds no chunks out, and the analysis"):
        check("train.test_fraction=0")
    check("train.test_fraction=0", drop=("analyze",))  # nothing to score: nothing to hold out
    with pytest.raises(ConfigError, match=r"analyze.dicts names \['b'\], which train.dicts does not make"):
        check("harvest.chunk_rows=32", "harvest.shard_rows=32", "analyze.dicts=[a, b]")
    (tmp_path / "run" / "dicts" / "b").mkdir(parents=True)  # trained by an earlier run
    check("harvest.chunk_rows=32", "harvest.shard_rows=32", "analyze.dicts=[a, b]")
    ok = ("harvest.chunk_rows=32", "harvest.shard_rows=32")
    check(*ok, "train.hook=vectors")  # the hook a vectors harvest writes; another was found after the import
    with pytest.raises(ConfigError, match=r"^train.hook='emb' is not among the hooks the harvest writes"):
        check(*ok, "train.hook=emb")
    check(*ok, "train.hook=emb", "harvest.vectors.hook=emb")
    said = r"^analyze.ce_loss needs a language model's activations at a hook; a harvest of mode vectors"
    with pytest.raises(ConfigError, match=said):
        check(*ok, "analyze.ce_loss=true")  # was found by the analysis, after the import and the training
    (tmp_path / "file").write_text("")  # the harvest ran, then training found no folder to write in
    with pytest.raises(ConfigError, match=r"^run_dir .*/file is a file, not a folder: set run_dir"):
        check("harvest.chunk_rows=32", "harvest.shard_rows=32", f"run_dir={tmp_path / 'file'}")
    tokens = ("harvest.mode=tokens", "harvest.max_tokens=64")  # one chunk of 64: found after the harvest
    with pytest.raises(ConfigError, match=r"^harvest.max_tokens=64 rows: one chunk of harvest.chunk_rows="
                                          r"64, and train holds whole chunks out .*; set harvest.chunk_rows="
                                          r"8 \(8 chunks or more\), or raise harvest.max_tokens$"):
        check(*tokens, "harvest.vectors=null")
    check(*tokens, "harvest.vectors=null", *ok)  # 2 chunks


def test_an_interrupted_stage_exits_130_and_keeps_its_work(tmp_path, monkeypatch, capsys):
    from actdict import cli

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_experiment", interrupted)
    assert cli.main(["train", str(tmp_path / "c.yaml")]) == 130
    assert capsys.readouterr().err == "actdict: interrupted (completed shards and checkpoints are kept)\n"


@pytest.mark.parametrize("override, message", [
    ("harvest.hooks=[]", r"harvest.hooks must name at least one hook"),
    ("harvest.hooks=[a, b, a]", r"harvest.hooks has duplicates: \['a', 'b', 'a'\]"),
    ("harvest.ctx=2", r"harvest.ctx must be >= 3 \(room for special tokens\), got 2"),
    ("harvest.batch_size=0", r"harvest.batch_size must be >= 1, got 0"),
    ("harvest.shard_rows=100", r"harvest.shard_rows \(100\) must be a multiple of harvest.chunk_rows \(4"),
    ("harvest.max_tokens=0", r"harvest.max_tokens must be >= 1 or null, got 0"),
])
def test_a_bad_harvest_section_is_a_config_error(tmp_path, override, message):
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\nharvest: {}\n")
    harvest_cls = _stage_cls("harvest")
    with pytest.raises(ConfigError, match=message):
        section(load_experiment(p, [override]), "harvest", harvest_cls)
    smallest = section(load_experiment(p, ["harvest.ctx=3", "harvest.max_tokens=1"]), "harvest", harvest_cls)
    assert (smallest.ctx, smallest.max_tokens) == (3, 1)


@pytest.mark.parametrize("override, message", [
    ("analyze.context=1000000000", r"^analyze.context must be in \[0, 512\] \(tokens on each side of a top "
                                   r"token\), got 1000000000$"),  # was a MemoryError after the pass
    ("analyze.context=-1", r"^analyze.context must be in \[0, 512\]"),
    ("analyze.density_bins=1000000000", r"^analyze.density_bins must be at most 10,000, got 1,000,000,000$"),
])
def test_an_analyze_size_beyond_memory_is_a_config_error(tmp_path, override, message):
    """hcfg: analyze.context=10**9 ended in an ArrayMemoryError traceback, density_bins=10**9 was killed for
    memory; the largest allowed values are taken."""
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\nanalyze: {}\n")
    with pytest.raises(ConfigError, match=message):
        section(load_experiment(p, [override]), "analyze", _stage_cls("analyze"))
    top = section(load_experiment(p, ["analyze.context=512", "analyze.density_bins=10000"]), "analyze",
                  _stage_cls("analyze"))
    assert (top.context, top.density_bins) == (512, 10000)


def test_a_url_run_dir_is_a_config_error(tmp_path, monkeypatch, capsys):
    """run_dir is a local folder: `run_dir=s3://b/run` stops with one line; before, Path() made it the local
    folder 's3:/b/run' and the harvest wrote the store there (only ``store`` may be an fsspec URL)."""
    from actdict.cli import main

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "v.npy", np.ones((16, 4), np.float32))
    (tmp_path / "v.yaml").write_text("harvest: {mode: vectors, vectors: {path: v.npy}}\n")
    assert main(["harvest", "v.yaml", "run_dir=s3://my-bucket/run"]) == 2
    assert "run_dir must be a local folder" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


@pytest.mark.parametrize("argv", [["harvest", "missing.yaml"], ["store", "missing"],
                                  ["lens", "missing.yaml", "x"]])
def test_the_command_line_runs_under_python_oo(tmp_path, argv):
    """Under ``python -OO`` (PYTHONOPTIMIZE=2) docstrings are None: the parsers' descriptions, taken from the
    module docstrings, crashed every command with an AttributeError before it read its arguments."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-OO", "-m", "actdict.cli", *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert (r.returncode, "Traceback" in r.stderr) == (2, False), r.stderr
    assert "missing" in r.stdout + r.stderr  # (actdict store says it on stdout)


def test_a_run_dir_in_the_home_folder_holds_the_whole_run(tmp_path, monkeypatch):
    """`run_dir: ~/runs/t` is one folder for every stage: the store went to $HOME/runs/t/store (fsspec
    expands '~') while the checkpoints, split, summary and report went to a literal './~/runs/t' (pathlib
    does not), so analyze and train saw one run in two places."""
    from actdict.cli import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    (tmp_path / "v.yaml").write_text("run_dir: ~/runs/t\nharvest: {mode: vectors, vectors: {path: v.npy}, "
                                     "chunk_rows: 8}\ntrain: {epochs: 1, dicts: [{name: a, variant: sae_l1, "
                                     "k: 8}]}\nanalyze: {device: cpu}\n")
    assert common_of(load_experiment(tmp_path / "v.yaml")).run_dir == str(tmp_path / "home" / "runs" / "t")
    assert main(["run", "v.yaml"]) == 0
    run = tmp_path / "home" / "runs" / "t"
    assert {p.name for p in run.iterdir()} >= {"store", "dicts", "split.json", "summary.json", "report.html"}
    assert not (tmp_path / "~").exists()


def test_a_store_in_the_home_folder_is_one_store_from_any_folder(tmp_path, monkeypatch, capsys):
    """`store: ~/s` (vectors written from Python: no config hash, so the store is known by its path) is the
    home folder's s wherever the command runs: its path was resolved against the current folder ('./~/s'),
    so a training run from another folder took it for another store and trained its dictionaries again."""
    from actdict.cli import main
    from actdict.harvest.store import write_vectors

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    x = np.random.default_rng(0).standard_normal((64, 4))  # [n, d]
    write_vectors(str(tmp_path / "home" / "s"), x, chunk_rows=8)
    (tmp_path / "t.yaml").write_text(f"run_dir: {tmp_path / 'run'}\nstore: ~/s\ntrain: {{epochs: 1, dicts: "
                                     "[{name: a, variant: sae_l1, k: 8}]}\n")
    assert common_of(load_experiment(tmp_path / "t.yaml")).store_path == str(tmp_path / "home" / "s")
    for cwd in ("a", "b"):
        (tmp_path / cwd).mkdir()
        monkeypatch.chdir(tmp_path / cwd)
        assert main(["train", str(tmp_path / "t.yaml")]) == 0
    assert "a: finished checkpoint with the same config exists, skipped" in capsys.readouterr().out


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


def test_a_sweep_expands_into_one_dictionary_per_combination_named_by_its_values(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n"
                   "    - {name: l1, variant: sae_l1, k: 64, params: {lam2: 0.2},\n"
                   "       sweep: {lr: [0.001, 3.0e-3], params: {lam1: [0.1, 1.0e-5]}}}\n"
                   "    - {name: v, variant: vaease, k: 32}\n"
                   "    - {name: t, variant: sae_topk, sweep: {seed: [0, 1, 2], k: [16]}}\n")
    with pytest.raises(ConfigError, match=r"no list item 'l1_lr-0' .*; the dictionaries of a sweep are set "
                                          r"through its item \(train.dicts.l1.FIELD=...\) or its sweep"):
        load_experiment(cfg, ["train.dicts.l1_lr-0.001_lam1-0.1.k=48"])  # a swept name: '.' cuts it
    dicts = section(load_experiment(cfg, ["train.dicts.l1.k=48"]), "train", TrainConfig).dicts
    assert [d.name for d in dicts] == ["l1_lr-0.001_lam1-0.1", "l1_lr-0.001_lam1-1e-05",
                                       "l1_lr-0.003_lam1-0.1", "l1_lr-0.003_lam1-1e-05", "v",
                                       "t_seed-0_k-16", "t_seed-1_k-16", "t_seed-2_k-16"]
    assert [(d.lr, d.params, d.k) for d in dicts[:4]] == [
        (lr, {"lam2": 0.2, "lam1": lam1}, 48)  # the override of the base item reaches every swept one
        for lr in (0.001, 0.003) for lam1 in (0.1, 1e-5)]
    assert [(d.seed, d.k, d.variant) for d in dicts[5:]] == [(s, 16, "sae_topk") for s in (0, 1, 2)]
    assert dicts[4] == build(TrainConfig, {"dicts": [{"name": "v", "variant": "vaease", "k": 32}]}).dicts[0]


@pytest.mark.parametrize("sweep, message", [
    ("{variant: [vae, sae_l1]}", r"dicts\[a\].sweep: cannot sweep 'variant'; valid: \['k', 'lr', 'seed'\]"),
    ("{k: 8}", r"train.dicts\[a\].sweep.k: expected a non-empty list of values, got 8"),
    ("{params: {lam1: []}}", r"sweep.params.lam1: expected a non-empty list"),
    ("{lr: [0.1, 0.1]}", r"sweep.lr: a value is listed twice"),
    ("{params: {lam2: [1, 2, 1.0]}}", r"sweep.params.lam2: a value is listed twice: \[1, 2, 1.0\]"),
    ("{k: [8, 16]}", r"sweep.k: also set outside the sweep \(4\)"),
    ("{params: {lam1: [1, 2]}}", r"sweep.params.lam1: also set outside the sweep \(0.5\)"),
    ("[1, 2]", r"train.dicts\[a\].sweep: expected a mapping"),
    ("{params: [1, 2]}", r"sweep.params: expected a mapping of the variant's params to lists of values "
                         r"\(\{lam1: \[0.1, 0.3\]\}\), got \[1, 2\]"),
    ("{params: {}}", r"sweep.params: expected a mapping of the variant's params .*, got \{\}"),
    (f"{{lr: {list(range(1, 11))}, seed: {list(range(10))}, params: {{lam2: {list(range(11))}}}}}",
     r"10 x 10 x 11 combinations; at most 1000 dictionaries per sweep"),  # checked before expanding
])
def test_a_bad_sweep_is_a_config_error_naming_it(tmp_path, sweep, message):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    item = f"{{name: a, variant: sae_l1, k: 4, params: {{lam1: 0.5}}, sweep: {sweep}}}"
    cfg.write_text(f"train:\n  dicts:\n    - {item}\n")
    with pytest.raises(ConfigError, match=message):
        section(load_experiment(cfg), "train", TrainConfig)



@pytest.mark.parametrize("params", ["null", "[1, 2]", "x"])
def test_a_sweep_of_params_beside_params_that_are_no_mapping_is_a_config_error(tmp_path, params):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"train:\n  dicts:\n    - {{name: a, variant: sae_l1, params: {params}, "
                   "sweep: {params: {lam1: [0.1, 1]}}}\n")
    with pytest.raises(ConfigError, match=r"^train.dicts\[a\].params: expected a mapping of the variant's "
                       r"params \(the sweep adds its own to it\), got (None|\[1, 2\]|'x')$"):
        section(load_experiment(cfg), "train", TrainConfig)


def test_a_swept_key_set_in_the_yaml_is_swept_from_the_command_line_once_an_override_unsets_it(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: a, variant: sae_topk, k: 4, params: {topk: 2}}\n")
    sweep = "train.dicts.a.sweep={k: [8, 16], params: {topk: [1, 3]}}"
    with pytest.raises(ConfigError, match=r"sweep.k: also set outside the sweep \(4\); set it in one place "
                       r"\(an override train.dicts.a.k=null unsets it\)$"):
        section(load_experiment(cfg, [sweep]), "train", TrainConfig)
    data = load_experiment(cfg, [sweep, "train.dicts.a.k=null", "train.dicts.a.params.topk=null"])
    assert [(d.name, d.k, d.params) for d in section(data, "train", TrainConfig).dicts] == [
        ("a_k-8_topk-1", 8, {"topk": 1}), ("a_k-8_topk-3", 8, {"topk": 3}),
        ("a_k-16_topk-1", 16, {"topk": 1}), ("a_k-16_topk-3", 16, {"topk": 3})]


def test_an_error_in_a_dictionary_after_a_sweep_names_it_not_its_index_in_the_expanded_list(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: a, variant: sae_l1, sweep: {seed: [0, 1, 2]}}\n"
                   "    - {name: b, variant: sae_topk, params: null}\n")  # the YAML's item 1, the list's 3
    with pytest.raises(ConfigError, match=r"^train.dicts\[b\].params: expected a mapping, got None$"):
        section(load_experiment(cfg), "train", TrainConfig)


def test_a_sweep_set_to_null_from_the_command_line_trains_the_one_dictionary_its_item_describes(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: a, variant: sae_l1, k: 4, sweep: {seed: [0, 1]}}\n")
    dicts = section(load_experiment(cfg, ["train.dicts.a.sweep=null"]), "train", TrainConfig).dicts
    assert [(d.name, d.k, d.seed) for d in dicts] == [("a", 4, None)]


@pytest.mark.parametrize("argv, required", [(["train"], "config"), ([], "stage, config"),
                                            (["feature"], "dict")])
def test_a_missing_argument_names_only_the_required_ones(capsys, argv, required):
    """The overrides (`actdict run CONFIG [key=value ...]`) and `actdict feature`'s indices may be left out;
    the usage error named them as required ('the following arguments are required: config, overrides')."""
    from actdict.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: the following arguments are required: "
                                                             f"{required}")
