"""Variants of other packages (entry points of group ``actdict.variants``): docs/variants.md's example
installed as a plugin trains and is analysed through ``actdict run``; broken and clashing plugins are left
out whole, with a warning, and a config naming their variant says why."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actdict.cli import main as actdict_main
from actdict.config import ConfigError
from actdict.errors import ActdictWarning
from actdict.train import checkpoint, export, plugins, protocol
from actdict.train.export import ExportError
from actdict.train.protocol import make, registry

DOCS = Path(__file__).parents[1] / "docs" / "variants.md"


def _docs_example() -> str:
    """The plugin module docs/variants.md shows (its one python block)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) == 1 and "tied_relu" in blocks[0]
    return blocks[0]


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install({module: source}, {entry name: value}): the modules and a distribution declaring the entry
    points, on sys.path; the registry as it was, and no plugin loaded, afterwards."""
    kept, added = registry(), []  # actdict's own (imported now, so that they are kept)
    site = tmp_path / "site"

    def go(modules: dict[str, str], entries: dict[str, str]) -> None:
        dist = site / "my_dicts-0.1.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-dicts\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(
            f"[{plugins.GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
        for name, source in modules.items():
            (site / f"{name}.py").write_text(source)
            added.append(name)
        monkeypatch.syspath_prepend(str(site))
        plugins.reset()

    yield go
    protocol._REGISTRY.clear()
    protocol._REGISTRY.update(kept)
    plugins.reset()
    for name in added:
        sys.modules.pop(name, None)


def _vectors_run(tmp_path: Path, x: np.ndarray, train: str, shard_rows: int = 256, chunk_rows: int = 128,
                 hook: str = ", hook: emb", analyze: bool = True) -> Path:
    """A config (returned) importing ``x`` [n, d], saved as tmp_path/v.npy, into tmp_path/run's store and
    training its ``train`` section there, analysed in brief when ``analyze``."""
    np.save(tmp_path / "v.npy", x)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest:
  {{mode: vectors, vectors: {{path: {tmp_path / 'v.npy'}{hook}}}, shard_rows: {shard_rows},
   chunk_rows: {chunk_rows}}}
train:
{train}
""" + ("analyze: {n_features: 2, top_k: 2, context: 0}\n" if analyze else ""))
    return cfg


def test_docs_example_plugin_trains_and_is_analysed(tmp_path, install, capsys):
    install({"tied_relu": _docs_example()}, {"tied_relu": "tied_relu"})
    assert registry()["tied_relu"].__module__ == "tied_relu" and "sae_l1" in registry()
    assert actdict_main(["variants"]) == 0
    assert "\ntied_relu (plugin tied_relu)\n  A tied-weights ReLU SAE: z = relu(" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1024, 4)) @ rng.standard_normal((4, 12))).astype(np.float32)  # [1024, 12]
    cfg = _vectors_run(tmp_path, x, """  epochs: 10
  batch_size: 128
  dicts: [{name: t, variant: tied_relu, k: 16, params: {lam: 0.01}}, {name: l1, variant: sae_l1, k: 16}]""",
                       shard_rows=512)
    assert actdict_main(["run", str(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]
    assert set(summary) == {"t", "l1"}
    t = summary["t"]
    assert 0 < t["l0"] <= 16 and 0.5 < t["ev"] <= 1, t  # rank-4 data, 16 tied latents
    model, cfg_json = checkpoint.load(tmp_path / "run" / "dicts" / "t")
    assert type(model).__name__ == "TiedReLU" and cfg_json["params"] == {"lam": 0.01}
    z = torch.relu((torch.from_numpy(x[:8]) - model.b_dec) @ model.W.T + model.b_enc)  # [8, 16]
    torch.testing.assert_close(model(torch.from_numpy(x[:8]), sample=False).x_hat, z @ model.W + model.b_dec)
    log = [json.loads(line) for line in (tmp_path / "run" / "logs" / "t.jsonl").read_text().splitlines()]
    steps = [r for r in log if "sse" in r]
    assert steps and steps[-1]["sse"] < steps[0]["sse"] / 2  # it learned
    capsys.readouterr()
    assert actdict_main(["export", str(tmp_path / "run" / "dicts" / "t"), str(tmp_path / "out")]) == 2
    assert "tied_relu" in capsys.readouterr().err and not (tmp_path / "out").exists()
    records = {n: json.loads((tmp_path / "run" / "dicts" / n / "cfg.json").read_text()) for n in ("t", "l1")}
    assert records["t"]["plugin"] == "tied_relu" and "plugin" not in records["l1"]
    del protocol._REGISTRY["tied_relu"]  # the plugin's package uninstalled: analysis names what is missing
    said = ("dicts/t: its variant 'tied_relu' is provided by no package installed here (it was trained with "
            "module 'tied_relu', a plugin): install the package")
    assert actdict_main(["analyze", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert said in err and err.rstrip().endswith("; or read the others without it: analyze.dicts=[l1]")
    assert actdict_main(["analyze", "--dry-run", str(cfg)]) == 2  # its plan says so too
    out = capsys.readouterr().out
    assert out.startswith("analyze: would stop: ") and said in out, out
    assert out.rstrip().endswith("; or read the others without it: analyze.dicts=[l1]")
    only_l1 = tmp_path / "l1.yaml"  # a run that trains l1 and analyses the folder, t included
    only_l1.write_text(re.sub(r"\{name: t, [^}]*\}\}, ", "", cfg.read_text()))
    assert actdict_main(["run", "--dry-run", str(only_l1)]) == 2
    out = capsys.readouterr().out
    assert "l1   sae_l1" in out and f"analyze: would stop: {tmp_path}/run/{said}" in out, out
    assert actdict_main(["analyze", str(cfg), "analyze.dicts=[l1]"]) == 0
    capsys.readouterr()
    assert actdict_main(["train", str(cfg)]) == 2  # the config names it: the run folder says where it's from
    assert capsys.readouterr().err.strip() == (
        "actdict: config error: train.dicts[t]: unknown dictionary variant 'tied_relu': "
        f"{tmp_path}/run/dicts/t was trained with it from module 'tied_relu', a plugin: install the package "
        "that provides it here (docs/variants.md, 'Your own variant')")


BROKEN = "raise ImportError('needs a library not installed here')\n"
CLASH = """
from torch import nn
from actdict.train.protocol import Dictionary, register
@register
class Fine(Dictionary):
    variant = "fine_one"
@register
class Clash(Dictionary):
    variant = "sae_l1"
"""
CLASS_ONLY = """
from actdict.train.protocol import Dictionary
class Unregistered(Dictionary):
    variant = "by_class"
"""


def test_broken_and_clashing_plugins_are_left_out_with_a_warning(install):
    own = registry()
    install({"broken": BROKEN, "clash": CLASH, "by_class": CLASS_ONLY},
            {"a_broken": "broken", "b_clash": "clash", "c_class": "by_class:Unregistered",
             "d_value": "json:dumps"})
    with pytest.warns(ActdictWarning) as said:
        got = registry()
    ours = ("a_broken", "b_clash", "c_class", "d_value")  # a plugin installed in the venv may warn too
    lines = sorted(m for w in said if (m := str(w.message)).split(" ")[2] in ours)
    assert len(lines) == 3, lines
    assert lines[0] == ("variant plugin a_broken (broken) left out: ImportError: needs a library not "
                        "installed here")
    assert lines[1].startswith("variant plugin b_clash (clash) left out: ValueError: variant 'sae_l1' "
                               "registered twice (actdict.train.variants.sae_l1 and clash)")
    assert lines[2] == ("variant plugin d_value (json:dumps) left out: TypeError: it names a function, not a "
                        "module or a Dictionary class")
    assert set(got) == set(own) | {"by_class"}  # fine_one undone with its module's clash
    assert got["sae_l1"] is own["sae_l1"] and got["by_class"].__name__ == "Unregistered"
    with pytest.raises(ConfigError, match=r"unknown dictionary variant 'fine_one'; .*variant plugins left "
                                          r"out: a_broken \(broken\): ImportError: needs a library"):
        make("fine_one", 4, 8)
    registry()  # loaded once: no second warning, same table
    assert set(registry()) == set(got)



def test_a_plugin_imported_by_a_broken_one_is_not_lost(install):
    """A broken plugin (a_fancy) that imports another entry point's module (b_base) on its way: b_base's
    variant stays, registered by its own entry point, not left out with a_fancy's import."""
    base = _docs_example().replace("tied_relu", "base_relu").replace("TiedReLU", "BaseReLU")
    install({"base_dicts": base, "fancy": "import base_dicts  # noqa\nimport not_installed_lib  # noqa\n"},
            {"a_fancy": "fancy", "b_base": "base_dicts"})
    with pytest.warns(ActdictWarning) as said:
        got = registry()
    assert [str(w.message) for w in said] == ["variant plugin a_fancy (fancy) left out: ModuleNotFoundError: "
                                              "No module named 'not_installed_lib'"]
    assert got["base_relu"].__module__ == "base_dicts" and make("base_relu", 4, 8).k == 8

def test_contract_tests_take_the_installed_plugin(tmp_path, install):
    """tests/test_variant_contract.py checks every registered variant: an installed plugin's too (a plugin's
    author runs it on theirs), here docs/variants.md's example, in a process of its own."""
    install({"tied_relu": _docs_example()}, {"tied_relu": "tied_relu"})
    root = Path(__file__).parents[1]
    path = os.pathsep.join([str(tmp_path / "site"), str(root)])
    env = os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           str(root / "tests" / "test_variant_contract.py"), "-k", "tied_relu"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0 and re.search(r"\b([5-9]|\d\d+) passed", done.stdout), done.stdout[-2000:]


LIST_PARAM = _docs_example().replace('"tied_relu"', '"tied_listed"').replace(
    'default_params = {"lam": 0.1}', 'default_params = {"lam": 0.1, "prefixes": [0.25, 1.0]}').replace(
    "lam: float = 0.1) -> None:\n        super().__init__(d, k, lam=lam)",
    "lam: float = 0.1, prefixes: tuple = (0.25, 1.0)) -> None:\n        super().__init__(d, k, lam=lam, "
    "prefixes=list(prefixes))")


def test_a_plugin_param_whose_default_is_a_list_takes_a_list(install):
    """A list default (nested prefixes of the dictionary): the config's list is that param's kind, and the
    whole params (defaults included), as analysis and checkpoint.load rebuild a model from, are accepted."""
    install({"tied_listed": LIST_PARAM}, {"tied_listed": "tied_listed"})
    assert make("tied_listed", 4, 8).params == {"lam": 0.1, "prefixes": [0.25, 1.0]}
    assert make("tied_listed", 4, 8, lam=0.1, prefixes=[0.5, 1.0]).params["prefixes"] == [0.5, 1.0]
    with pytest.raises(ConfigError, match=r"^tied_listed: prefixes must be a list, got 0.5$"):
        make("tied_listed", 4, 8, prefixes=0.5)


def test_a_module_that_registers_nothing_is_said(install):
    """An entry point naming a module whose class lacks @register (or a class that is no Dictionary) loads
    without error but provides nothing: a warning says so, and a config naming the variant is told why."""
    install({"forgot": CLASS_ONLY.replace("by_class", "forgot_it")},
            {"forgot": "forgot", "json": "json:JSONDecoder"})
    with pytest.warns(ActdictWarning) as said:
        got = registry()
    assert sorted(str(w.message) for w in said) == [
        "variant plugin forgot (forgot) left out: LookupError: its module registered no variant (its "
        "Dictionary subclass needs @register)",
        "variant plugin json (json:JSONDecoder) left out: TypeError: it names a class of no Dictionary, not "
        "a module or a Dictionary class"]
    assert "forgot_it" not in got
    with pytest.raises(ConfigError, match=r"unknown dictionary variant 'forgot_it'; .*left out: forgot "
                                          r"\(forgot\): LookupError: its module registered no variant"):
        make("forgot_it", 4, 8)


@pytest.mark.parametrize("returned, said", [
    ('{"sse": sse}', "the keys ['sse']"),
    ('{"loss": sse, "l1": out.codes.sum(-1)}', "'l1' of shape [128]"),
    ('{"loss": sse, "lam": 0.1}', "'lam' a float"),
    ("sse", "a Tensor")])
def test_loss_terms_off_the_protocol_are_one_line(tmp_path, install, capsys, returned, said):
    """A plugin's loss_terms without "loss", with a term that is no scalar tensor, or not a dict: the training
    stops at its first step with one line naming the dictionary, the variant and what it returned."""
    source = _docs_example().replace('"tied_relu"', '"tied_bad"').replace(
        'return {"loss": sse + self.params["lam"] * l1, "sse": sse, "l1": l1}', f"return {returned}")
    install({"tied_bad": source}, {"tied_bad": "tied_bad"})
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    one = "  {epochs: 1, batch_size: 128, dicts: [{name: t, variant: tied_bad, k: 8}]}"
    cfg = _vectors_run(tmp_path, x, one, analyze=False)
    assert actdict_main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("actdict: TrainingError: t: loss_terms of variant 'tied_bad' must return a dict of scalar "
                   f"tensors with the total under 'loss' (docs/variants.md); it returned {said}")


@pytest.mark.parametrize("view, said", [
    ('{"architecture": "standard", "apply_b_dec_to_input": True, "W_enc": self.W, "b_enc": self.b_enc, '
     '"W_dec": self.W, "b_dec": self.b_dec}', "gave W_enc of shape [8, 4], not [4, 8] (d 4, k 8)"),
    ('{"architecture": "standard", "W_enc": self.W.T, "b_enc": self.b_enc, "W_dec": self.W, '
     '"b_dec": self.b_dec}', "gave no apply_b_dec_to_input (True or False)"),
    ('{"architecture": "jumprelu", "apply_b_dec_to_input": True, "W_enc": self.W.T, "b_enc": self.b_enc, '
     '"W_dec": self.W, "b_dec": self.b_dec}', "gave no tensor threshold, not [8] (d 4, k 8)"),
    ('{"architecture": "relu", "apply_b_dec_to_input": True}',
     "gave architecture 'relu', not one of ['gated', 'jumprelu', 'standard', 'topk']"),
    ('{"architecture": "topk", "apply_b_dec_to_input": True, "W_enc": self.W.T, "b_enc": self.b_enc, '
     '"W_dec": self.W, "b_dec": self.b_dec}', "of a topk SAE gave k None, not 1 to 8")])
def test_a_plugin_export_view_off_the_format_is_refused(install, view, said):
    """A plugin's to_saelens() with transposed weights, a missing key or an unknown architecture: export
    says what is wrong and writes nothing (before: a transposed W_enc was written as d_in = k, d_sae = d;
    a missing key was a KeyError)."""
    source = _docs_example().replace('"tied_relu"', '"tied_export"') + (
        "\n    def to_saelens(self):\n        return {k: v.detach() if isinstance(v, torch.Tensor) else v "
        f"for k, v in {view}.items()}}\n")
    install({"tied_export": source}, {"tied_export": "tied_export"})
    with pytest.raises(ExportError) as e:
        export.saelens_view(make("tied_export", 4, 8))
    assert str(e.value) == f"tied_export: to_saelens() {said}: nothing exported"


@pytest.mark.parametrize("edit, said", [
    (("self.W", "self.W_tied"), "W [8, 4] (the record's: none), W_tied missing (the record's: [8, 4])"),
    (('{"lam": 0.1}', "{}"),
     "its cfg.json records params the variant refuses: tied_relu: unknown params ['lam']; valid: []")])
def test_a_checkpoint_of_a_plugin_changed_since_says_so(tmp_path, install, capsys, edit, said):
    """The plugin's code changed after the training (a parameter renamed, a param dropped): reading the
    checkpoint says the installed plugin no longer builds it, not that the folder is damaged and that a
    rerun of the training (which skips it as finished) trains it again, nor a 'config error'."""
    install({"tied_relu": _docs_example()}, {"tied_relu": "tied_relu"})
    checkpoint.save(tmp_path / "dicts" / "t", make("tied_relu", 4, 8), {"finished": True})
    source = _docs_example().replace(*edit)
    if edit[1] == "{}":  # no lam any more
        source = source.replace("lam: float = 0.1) -> None:\n        super().__init__(d, k, lam=lam)",
                                ") -> None:\n        super().__init__(d, k)")
    (tmp_path / "site" / "tied_relu.py").write_text(source)
    del protocol._REGISTRY["tied_relu"], sys.modules["tied_relu"]
    plugins.reset()
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(tmp_path / "dicts" / "t")
    assert str(e.value).startswith(
        f"{tmp_path / 'dicts' / 't'}: variant 'tied_relu' of module 'tied_relu' (a plugin), as installed "
        "here, does not build the model saved there: its code changed since the training? Install the "
        "version it was trained with, or delete the folder and rerun actdict train (")
    assert said in str(e.value)
    assert actdict_main(["export", str(tmp_path / "dicts" / "t"), str(tmp_path / "out")]) == 2
    assert "its code changed since the training?" in capsys.readouterr().err


def test_a_plugin_reading_a_tensor_value_in_its_constructor_is_checked_and_read(tmp_path, install, capsys):
    """A constructor that reads a value of its weights (float(t), .item(): fine on any real device) cannot
    run on the meta device, where the config check and a checkpoint's shape check build models: those
    build it for real instead, so --dry-run plans it, and the run trains and analyses it (before: a
    RuntimeError traceback from the config check, and from every reader of its checkpoint)."""
    source = _docs_example().replace('"tied_relu"', '"tied_norm"').replace(
        "self.b_dec = nn.Parameter(torch.zeros(d))",
        "self.b_dec = nn.Parameter(torch.zeros(d))\n        self.init_norm = float(self.W.detach().norm())")
    install({"tied_norm": source}, {"tied_norm": "tied_norm"})
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    one = "  {epochs: 1, batch_size: 128, dicts: [{name: t, variant: tied_norm, k: 8}]}"
    cfg = _vectors_run(tmp_path, x, one)
    assert actdict_main(["run", str(cfg), "--dry-run"]) == 0
    assert re.search(r"\n +t +tied_norm +8 .* to train ", capsys.readouterr().out)
    assert actdict_main(["run", str(cfg)]) == 0
    model, _ = checkpoint.load(tmp_path / "run" / "dicts" / "t")
    assert model.init_norm > 0 and model.W.shape == (8, 6)
    assert set(json.loads((tmp_path / "run" / "summary.json").read_text())["models"]) == {"t"}
    capsys.readouterr()
    assert actdict_main(["run", str(cfg), "train.dicts.t.params.lamb=1", "--dry-run"]) == 2  # still checked
    said = capsys.readouterr().err
    assert "config error: train.dicts[t]: tied_norm: unknown params ['lamb']; valid: ['lam']" in said


KWARGS = """
import torch
from torch import nn
from actdict.train.protocol import Dictionary, Forward, register
@register
class Kw(Dictionary):
    variant = "kw_relu"
    default_params = {"lam": 0.1}
    optional_params = {"init": "randn"}
    def __init__(self, d, k, **params):  # as actdict's own SAEs take their params
        super().__init__(d, k, **(self.default_params | params))
        self.W = nn.Parameter(torch.randn(k, d))
"""


def test_a_plugin_taking_any_params_has_a_misspelt_one_refused(install, capsys):
    """A plugin whose constructor takes **params (as our SAEs' do) and declares default_params: a param
    it does not declare (a typo, lamm for lam) is a config error naming the valid ones, as for ours (before:
    stored and trained with lam at its default); optional_params are accepted."""
    install({"kw_relu": KWARGS}, {"kw_relu": "kw_relu"})
    with pytest.raises(ConfigError, match=r"^kw_relu: unknown params \['lamm'\]; valid: \['init', 'lam'\]$"):
        make("kw_relu", 4, 8, lamm=0.3)
    assert make("kw_relu", 4, 8, lam=0.3, init="zeros").params == {"lam": 0.3, "init": "zeros"}
    assert actdict_main(["variants", "kw_relu"]) == 0
    assert "params: lam=0.1; also: init='randn'" in capsys.readouterr().out


def test_an_unknown_variant_points_to_plugins(install):
    """A config naming a variant no installed package provides (its plugin uninstalled, or never installed
    here) is told that another package's variant needs that package, not only the registered names."""
    install({}, {})
    with pytest.raises(ConfigError) as e:
        make("matryoshka_relu_", 4, 8)
    assert str(e.value).startswith("unknown dictionary variant 'matryoshka_relu_'; registered: ['lse', ")
    assert str(e.value).endswith("] (a variant of another package needs that package installed: "
                                 "docs/variants.md, 'Your own variant')")


def test_an_integer_param_given_as_a_whole_float_reaches_the_plugin_as_an_int(install):
    """check_params takes 2.0 for an integer param (its default 2): the constructor gets 2, so a plugin's
    torch.randn(n_heads, k, d) builds (before: 'bad params {'n_heads': 2.0}: randn() received an invalid
    combination of arguments', over several lines); 2.5 is still refused."""
    source = _docs_example().replace('"tied_relu"', '"tied_heads"').replace(
        'default_params = {"lam": 0.1}', 'default_params = {"lam": 0.1, "n_heads": 2}').replace(
        "lam: float = 0.1) -> None:\n        super().__init__(d, k, lam=lam)",
        "lam: float = 0.1, n_heads: int = 2) -> None:\n        super().__init__(d, k, lam=lam, "
        "n_heads=n_heads)\n        self.heads = nn.Parameter(torch.zeros(n_heads, d))")
    install({"tied_heads": source}, {"tied_heads": "tied_heads"})
    m = make("tied_heads", 4, 8, n_heads=3.0, lam=1)
    assert m.heads.shape == (3, 4) and m.params == {"lam": 1, "n_heads": 3}
    assert type(m.params["n_heads"]) is int and type(m.params["lam"]) is int  # a float param: as given
    with pytest.raises(ConfigError, match=r"^tied_heads: n_heads must be an integer, got 2.5$"):
        make("tied_heads", 4, 8, n_heads=2.5)


def test_make_meta_passes_on_a_plugins_own_config_error(install):
    """make_meta leaves to the real build only failures of the meta device itself: a plugin's own
    ConfigError whose words happen to say 'meta' (a param named metadata) is still the config check's."""
    source = _docs_example().replace('"tied_relu"', '"tied_meta"').replace(
        "super().__init__(d, k, lam=lam)", "super().__init__(d, k, lam=lam)\n        if lam > 1:\n"
        "            raise ConfigError('lam > 1 needs metadata')").replace(
        "import torch\n", "import torch\nfrom actdict.config import ConfigError\n", 1)
    install({"tied_meta": source}, {"tied_meta": "tied_meta"})
    assert protocol.make_meta("tied_meta", 4, 8, lam=0.5).W.is_meta
    with pytest.raises(ConfigError, match="^lam > 1 needs metadata$"):
        protocol.make_meta("tied_meta", 4, 8, lam=2)


@pytest.mark.parametrize("positive, said", [
    ('"lam"', "got 'lam'"),  # ("lam") is a string: 'must be > 0: l, a, m', checked by substring
    ('("lamb",)', "got ('lamb',)")])  # a name that is no param: never checked
def test_a_plugin_whose_positive_is_not_its_params_names_is_left_out(install, positive, said):
    source = _docs_example().replace('"tied_relu"', '"tied_pos"').replace(
        'default_params = {"lam": 0.1}', f'default_params = {{"lam": 0.1}}\n    positive = {positive}')
    install({"tied_pos": source}, {"tied_pos": "tied_pos"})
    with pytest.warns(ActdictWarning) as warned:
        assert "tied_pos" not in registry()
    assert [str(w.message) for w in warned] == [
        "variant plugin tied_pos (tied_pos) left out: ValueError: variant 'tied_pos': positive must be a "
        f"tuple of its params' names ['lam'], {said}"]


NODECODE = """
import torch
from torch import nn
from actdict.train.protocol import Dictionary, Forward, register
@register
class NoDecode(Dictionary):
    variant = "no_decode"
    def __init__(self, d, k):
        super().__init__(d, k)
        self.enc, self.dec = nn.Linear(d, k), nn.Linear(k, d)
    def forward(self, x, sample=True):
        z = torch.relu(self.enc(x))
        return Forward(self.dec(z), codes=z, activity=z.log(), extras={})
    def loss_terms(self, x, out):
        sse = (out.x_hat - x).pow(2).sum(-1).mean()
        return {"loss": sse, "sse": sse}
"""


def test_a_variant_without_decode_is_analysed_without_its_masked_curve_and_says_so(tmp_path, install):
    """decode is what the masked-dimensions curve needs: a plugin without one trained and was analysed with
    summary.json's masked_curve null and not a word of why."""
    install({"no_decode": NODECODE}, {"no_decode": "no_decode"})
    x = np.random.default_rng(1).standard_normal((512, 6)).astype(np.float32)
    one = "  {epochs: 1, batch_size: 64, dicts: [{name: n, variant: no_decode, k: 8}]}"
    cfg = _vectors_run(tmp_path, x, one, chunk_rows=64, hook="")
    with pytest.warns(ActdictWarning, match=r"^no_decode has no decode\(\): no masked-dimensions curve"):
        assert actdict_main(["run", str(cfg)]) == 0
    model = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]["n"]
    assert model["masked_curve"] is None and 0 < model["l0"] <= 8


SQUARED_MEAN = _docs_example().replace('"tied_relu"', '"tied_mean"').replace(
    "l1 = out.codes.sum(-1).mean()  # codes >= 0", "l1 = MEAN.pow(2).sum()  # the batch's mean code, squared")


@pytest.mark.parametrize("mean, ok", [("out.codes.mean(0)", False), ("batch_mean(out.codes)", True)])
def test_ddp_check_tells_a_rank_local_batch_mean_from_the_global_one(tmp_path, install, monkeypatch, capsys,
                                                                     mean, ok):
    """actdict variants NAME --check --ddp trains the plugin on 2 torchrun ranks and in one process (the
    subprocesses find it through its entry point): a penalty of the batch's mean code taken with .mean(0)
    is each rank's half-batch's, another loss, and the weights part; dist.batch_mean's is one process's."""
    imports = "\nimport torch\n\nfrom actdict.train.dist import batch_mean\n"
    source = SQUARED_MEAN.replace("MEAN", mean).replace("\nimport torch\n", imports, 1)
    install({"tied_mean": source}, {"tied_mean": "tied_mean"})
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    assert actdict_main(["variants", "tied_mean", "--check", "--ddp"]) == (0 if ok else 1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:6] == ["tied_mean: the protocol's contract (k 16)", *(
        f"  {c:<10} ok" for c in ("shapes", "loss", "gradients", "round_trip", "training"))]
    if ok:
        assert lines[6:] == ["  ddp        ok"]
    else:
        assert lines[6].startswith("  ddp        FAILED: W differs by up to ") and len(lines) == 7
        assert lines[6].endswith("random noise from dist.noise_like (docs/variants.md, 'Your own variant')")
        found = float(re.search(r"W differs by up to ([\d.e-]+)", lines[6])[1])
        assert found > 1e-3  # far outside the float32 tolerance (1e-5 + 1e-4 |w|) that one process is held to


def _on_rank_1(what: str) -> str:
    """The docs' plugin as variant 'tied_rank1', doing ``what`` (Python lines) in its loss on rank 1 only."""
    lines = "".join(f"            {ln}\n" for ln in what.splitlines())
    return _docs_example().replace('"tied_relu"', '"tied_rank1"').replace(
        "        sse = (out.x_hat - x).pow(2).sum(-1).mean()\n",
        "        import torch.distributed as td\n        if td.is_initialized() and td.get_rank() == 1:\n"
        f"{lines}        sse = (out.x_hat - x).pow(2).sum(-1).mean()\n")


def test_ddp_check_names_the_error_of_a_variant_that_fails_on_2_ranks_only(tmp_path, install, monkeypatch,
                                                                            capsys):
    """A variant that raises on rank 1 only: the line used to end with torchrun's summary's last line,
    'exit 1: =====...', which names no cause; it names the rank's exception."""
    install({"tied_rank1": _on_rank_1("raise RuntimeError('the probe needs one process')")},
            {"tied_rank1": "tied_rank1"})
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    assert actdict_main(["variants", "tied_rank1", "--check", "--ddp"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  ddp        FAILED: the training on 2 ranks failed (exit 1: rank 1: RuntimeError: the probe needs "
        "one process)")


def test_ddp_check_failure_prefers_a_ranks_own_message_to_torchruns_summary():
    from actdict.train.ddp_check import failure

    peer = ("[rank0]: actdict (rank 0 of 2): ActdictError: another rank of this torchrun run failed "
            "(Connection reset by peer): see its own message above")
    summary = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n" + "=" * 60 + "\n"
    raised = "[rank1]: Traceback (most recent call last):\n[rank1]:   File 'x.py'\n[rank1]: ValueError: k\n"
    assert failure(peer + "\n" + raised + summary) == "rank 1: ValueError: k"
    own = "actdict (rank 1 of 2): ConfigError: train.dicts[0].k must be > 0\n"
    assert failure(peer + "\n" + own + raised + summary) == own.strip()
    assert failure(peer + "\n" + summary).startswith("rank 0: actdict (rank 0 of 2): ActdictError: another")
    assert failure("Traceback:\nImportError: no module named x\n") == "ImportError: no module named x"


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the ranks through /proc")
def test_ddp_check_stops_every_rank_of_a_training_that_hangs(tmp_path, install, monkeypatch, capsys):
    """A variant whose rank 1 never returns (as one waiting on a collective rank 0 skips): the check's
    timeout used to kill torchrun only, leaving both ranks running for ever; torchrun is told to stop them
    and no process of the check's folder is left."""
    import tempfile

    from actdict.train import ddp_check

    install({"tied_rank1": _on_rank_1("import time\ntime.sleep(3600)")}, {"tied_rank1": "tied_rank1"})
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setattr(ddp_check, "TIMEOUT", 15)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the check's folder, in every rank's command
    assert actdict_main(["variants", "tied_rank1", "--check", "--ddp"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  ddp        FAILED: the training on 2 ranks failed (it did not end within 15 s, and its processes "
        "were stopped: a rank that waits on a collective (all_reduce, barrier) that another rank skips waits "
        "for ever)")
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(tmp_path).encode() in cmdline.read_bytes():
                left.append(cmdline.parent.name)
        except OSError:  # ended meanwhile
            pass
    assert left == []


def test_ddp_check_says_when_its_trainings_do_not_find_the_plugin(tmp_path, install, capsys):
    """A variant this process registered (its package on sys.path here only, not on the subprocesses'): the
    line was the training's config error cut at 300 characters ('... (a variant of another package needs
    that pack'); it says the subprocesses do not find it and to install its package."""
    install({"tied_relu": _docs_example()}, {"tied_relu": "tied_relu"})  # no PYTHONPATH: not found there
    assert actdict_main(["variants", "tied_relu", "--check", "--ddp"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  ddp        FAILED: the trainings (python -m actdict.cli train, subprocesses) do not find "
        "'tied_relu': install its package in this environment (pip install -e PATH), with its entry point, "
        "as torchrun's ranks need it (docs/variants.md)")


def test_ddp_check_on_a_torch_without_distributed_says_so_before_training(monkeypatch, capsys):
    """A torch built without torch.distributed (or its gloo backend) cannot run torchrun: the check says
    so in one line, and trains nothing (it used to train in one process, then fail on torchrun's import)."""
    import torch.distributed as dist

    from actdict.train import ddp_check

    monkeypatch.setattr(dist, "is_available", lambda: False)
    monkeypatch.setattr(ddp_check, "train", lambda *a: pytest.fail("trained"))
    assert actdict_main(["variants", "sae_l1", "--check", "--ddp"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"  ddp        FAILED: this torch ({torch.__version__}) was built without torch.distributed, so "
        "torchrun cannot run: run the check where it has it (Linux and Windows wheels do; its plain --check "
        "needs none)")
