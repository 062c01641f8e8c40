"""The checks of each section's values before a stage runs: bad values, devices, sizes, paths."""

from pathlib import Path

import numpy as np
import pytest

from actdict.config import ConfigError, common_of, load_experiment, section
from tests.configs_helpers import _stage_cls


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


_SAE_TOPK = "[{name: a, variant: sae_topk, k: 8, params: {topk: %s}}]"
_REVIEWS = Path(__file__).parent / "data" / "reviews.jsonl"  # texts with stars, no collection


@pytest.mark.parametrize("dicts, more, message", [
    (_SAE_TOPK % 9, [], r"train.dicts\[a\]: sae_topk: topk must be"),
    (_SAE_TOPK % "ten", [], r"train.dicts\[a\]: sae_topk: topk must be an integer, got .ten."),
    ("[{name: a, variant: vaease, params: {lam1: 1}}]", [], r"vaease: unknown params \[.lam1.\]"),
    ("[{name: a, variant: vaeaes}]", [], r"train.dicts\[a\]: unknown dictionary variant 'vaeaes'"),
    ("[{name: a, variant: vae}, {name: a, variant: vaease}]", [], "unique names"),
    ("[{name: SAE, variant: sae_l1}, {name: vae, variant: vae}, {name: sae, variant: sae_l1}]", [],
     r"train.dicts names 'SAE' and 'sae', which differ only in case: on a case-insensitive file system "
     r"\(macOS', Windows' default\) they are one folder dicts/SAE, and one dictionary would overwrite the "
     r"other; rename one$"),  # macOS: one folder, the second dictionary written over the first
    ("[{name: a, variant: vae}]", ["analyze.dicts=[a, b]"], r"analyze.dicts names \['b'\], which"),
    ("[{name: a, variant: vae}]", ["analyze.labels=no.npy", "analyze.labels_field="],
     "analyze.labels: no.npy not found"),
    ("[{name: a, variant: vae}]", ["analyze.labels=no.npy"],  # the demo labels by its corpus's collections
     r"analyze.labels \('no.npy'\) and analyze.labels_field \('collection'\) are both set: .* \(to use the "
     r"file, empty the field: analyze.labels_field= on the command line\)"),
    ("[{name: a, variant: vae}]", ["analyze.labels_field=colour"],  # found after the training, before
     r"analyze.labels_field: the demo corpus's documents have no field 'colour'; fields: text, source, "
     r"collection \(set analyze.labels_field= to analyze without labels, or name one of them\)$"),
    ("[{name: a, variant: vae}]", ["harvest.source.kind=files", f"harvest.source.path={_REVIEWS}"],
     r"analyze.labels_field: 1 json file\(s\) at .*: rows have no field 'collection'"),
    ("[{name: a, variant: vae}]", ["harvest.source.kind=files", "harvest.source.path=/no/pile-10k"],
     r"actdict: SourceError: no \.json/\.jsonl/\.parquet/\.text/\.txt files at '/no/pile-10k'$"),  # was said
    # as the labels field's ('analyze.labels_field: no ... files ... (set analyze.labels_field= ...)')
    ("[{name: a, variant: vae}]", ["harvest.mode=vectors", "harvest.vectors.path=x.npy"],
     r"analyze.labels_field='collection' labels rows by their documents' field, and a vectors harvest has "
     r"no documents"),
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
    ("[{name: a, variant: vae}]", ["harvest.max_tokens=5000", "harvest.chunk_rows=16777216",
                                   "harvest.shard_rows=16777216"],  # 13 GB written for 5,000 rows
     r"harvest.chunk_rows 16,777,216 is more than the max_tokens=5,000 rows to write \(and the default 4,096"
     r"\), and a chunk is stored whole, padded: leave harvest.chunk_rows out for the default, or give at "
     r"most 5,000"),
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
        with pytest.raises(ConfigError, match=r"--device=mps, but this torch .* cannot use MPS \(it "):
            check_device("mps", "--device")
    if torch.cuda.is_available():
        check_device("cuda:0", "train.device")
    else:
        with pytest.raises(ConfigError, match=r"train.device=cuda:1, but this torch .* sees no CUDA device"):
            check_device("cuda:1", "train.device")


@pytest.mark.parametrize("built", [False, True])
def test_mps_is_a_harvest_device_where_torch_has_it_and_refused_where_float64_is_needed(monkeypatch, built):
    """Apple's GPUs: ``mps`` was taken by every stage where torch has it, and a training or analysis then
    stopped with a traceback at its first float64 sum (MPS has none). The harvest may run on it; training
    and analysis refuse it in one line; where torch has no MPS, each stage says why (docs/architecture.md,
    Platforms). ``auto`` stays cuda, else cpu."""
    import torch

    from actdict.config import check_device
    from actdict.harvest.models import resolve_device

    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    why = ("it finds no MPS device: that needs macOS 12.3 or later on Apple silicon or an AMD GPU" if built
           else "it is built without MPS")
    with pytest.raises(ConfigError) as e:
        resolve_device("mps")
    assert str(e.value) == (f"harvest.device=mps, but this torch ({torch.__version__}) cannot use MPS "
                            f"({why}); use 'auto' or 'cpu'")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "is_available", lambda: True)
    assert resolve_device("mps") == "mps"
    assert resolve_device("auto") == "cpu"  # this machine has no CUDA: auto never picks mps
    for where in ("train.device", "analyze.device"):
        with pytest.raises(ConfigError) as e:
            check_device("mps", where, float64=True)
        assert str(e.value) == (f"{where}=mps: training and analysis keep sums and thresholds in float64, "
                                "which MPS devices lack; use 'cpu' here (harvest.device may be mps: the "
                                "model's forward runs there)")


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
    own = {n for n, cls in registry().items() if cls.__module__.startswith("actdict.")}  # not plugins'
    assert listed == own and len(listed) == 13, sorted(own ^ listed)


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
                                          r"8 \(8 chunks\), or raise harvest.max_tokens$"):
        check(*tokens, "harvest.vectors=null")
    check(*tokens, "harvest.vectors=null", *ok)  # 2 chunks


@pytest.mark.parametrize("rows, said", [
    (5, r"holds 5 vectors: one chunk .*; set harvest.chunk_rows=1 \(5 chunks\)$"),  # said: 8 chunks or more
    (1, r"holds 1 vectors: one chunk of harvest.chunk_rows=1, .*; import more than one vector$"),  # set 1
])
def test_the_chunk_rows_a_small_vectors_file_is_told_to_set_is_one_that_splits_it(tmp_path, rows, said):
    from actdict.cli import check_run
    from actdict.config import STAGES

    np.save(tmp_path / "v.npy", np.zeros((rows, 3), np.float32))
    p = tmp_path / "c.yaml"
    p.write_text(f"run_dir: {tmp_path / 'run'}\nharvest: {{mode: vectors, vectors: {{path: "
                 f"{tmp_path / 'v.npy'}}}, chunk_rows: {rows}, shard_rows: 60}}\n"
                 "train: {dicts: [{name: a, variant: vae}]}\nanalyze: {}\n")
    data = load_experiment(p, [])
    with pytest.raises(ConfigError, match=said):
        check_run(data, {s: section(data, s, _stage_cls(s)) for s in STAGES if s in data})


@pytest.mark.parametrize("override, message", [
    ("harvest.hooks=[]", r"harvest.hooks must name at least one hook"),
    ("harvest.hooks=[a, b, a]", r"harvest.hooks has duplicates: \['a', 'b', 'a'\]"),
    ("harvest.hooks=[blocks.1.hook_resid_post, Blocks.1.Hook_Resid_Post]",
     r"^harvest.hooks names 'blocks.1.hook_resid_post' and 'Blocks.1.Hook_Resid_Post', which differ only in "
     r"case: on a case-insensitive file system \(macOS', Windows' default\) they are one folder of the "
     r"store, and one hook's shards would overwrite the other's$"),
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


@pytest.mark.parametrize("name, why", [
    ("sae_l1_lam1-0.1_seed-0", None),  # a sweep's name
    ("blocks.3.hook_resid_post", None),
    ("lam:0.1", "Windows takes none of ':' in a file name"),  # an NTFS data stream of the file 'lam'
    ("x\\..\\..\\y", "Windows takes none of '\\\\' in a file name"),  # out of dicts/ on Windows
    ('sae_l1_p-{"a": 1}', "Windows takes none of '\":' in a file name"),  # a sweep over a mapping
    ("Com1.json", "Windows keeps 'Com1' for a device"),
    ("sae.", "Windows drops a file name's trailing dot or space"),
])
def test_windows_name_problem_says_what_windows_refuses_in_a_file_name(name, why):
    from actdict.names import windows_name_problem

    assert windows_name_problem(name) == why


def test_on_windows_a_dictionary_or_hook_name_windows_cannot_hold_is_a_config_error(monkeypatch):
    """A name Windows cannot give a file (':' opens a data stream of another file; '\\' is its separator,
    so 'x\\..\\..\\y' left dicts/) was taken there: it is refused where the run is on Windows, and a
    POSIX system keeps taking it (docs/architecture.md, Platforms)."""
    import actdict.names
    from actdict.names import check_hook_name
    from actdict.train.config import DictConfig

    assert DictConfig(name="lam:0.1", variant="vae").name == "lam:0.1"  # Linux, macOS: a file name
    check_hook_name("con", "harvest.vectors.hook")
    monkeypatch.setattr(actdict.names, "WINDOWS", True)
    with pytest.raises(ConfigError) as e:
        DictConfig(name="lam:0.1", variant="vae")
    assert str(e.value) == ("train.dicts: 'lam:0.1' cannot name a dictionary here (it names its folder "
                            "dicts/<name>): Windows takes none of ':' in a file name; rename it")
    with pytest.raises(ConfigError) as e:
        check_hook_name("con", "harvest.vectors.hook")
    assert str(e.value) == ("harvest.vectors.hook='con' cannot name a folder of the store here: Windows "
                            "keeps 'con' for a device; rename it")
    assert DictConfig(name="sae_l1_lam1-0.1_seed-0", variant="sae_l1").name == "sae_l1_lam1-0.1_seed-0"
