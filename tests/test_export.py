"""SAELens export: read the files back and reproduce encode/decode with plain torch (no sae-lens needed)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from actdict.train import checkpoint
from actdict.train.export import ExportError, export_saelens, main
from actdict.train.protocol import make

D, K = 7, 12
CASES = {  # variant -> (params, SAELens architecture)
    "sae_l1": ({}, "standard"), "sae_log": ({}, "standard"), "sae_topk": ({"topk": 3}, "topk"),
    "sae_topk_auxk": ({"topk": 3}, "topk"), "sae_batchtopk": ({"topk": 3}, "jumprelu"),
    "sae_jumprelu": ({"threshold_init": 0.3}, "jumprelu"), "sae_l1_decnorm": ({}, "standard"),
    "sosae": ({}, "standard"), "lse": ({}, "standard"), "sae_gated": ({}, "gated"),
}


def saelens_forward(folder):
    """SAELens' encode/decode for its four ReLU architectures, written from its documented semantics."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(str(folder / "sae_weights.safetensors"))

    def run(x):  # x: [B, d_in]
        xin = x - w["b_dec"] if cfg["apply_b_dec_to_input"] else x
        if cfg["architecture"] == "gated":  # GatedSAE.encode: a gate, and magnitudes through W_enc exp(r_mag)
            mag = xin @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]  # [B, d_sae]
            z = (xin @ w["W_enc"] + w["b_gate"] > 0) * torch.relu(mag)
            return z, z @ w["W_dec"] + w["b_dec"]
        pre = xin @ w["W_enc"] + w["b_enc"]  # [B, d_sae]
        if cfg["architecture"] == "standard":
            z = torch.relu(pre)
        elif cfg["architecture"] == "topk":
            top = pre.topk(cfg["k"], dim=-1)
            z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        else:
            z = torch.relu(pre) * (pre > w["threshold"])
        return z, z @ w["W_dec"] + w["b_dec"]

    return cfg, w, run


def trained_model(variant, params, x):
    m = make(variant, D, K, seed=2, **params)
    with torch.no_grad():  # move the biases off zero so every term of the mapping is exercised
        for name, p in m.named_parameters():
            if name.split(".")[-1] in ("b_enc", "b_dec", "bias", "r_mag", "b_mag"):
                p.add_(torch.linspace(-0.3, 0.3, p.numel()).reshape(p.shape))
    m.train()
    m(x)  # BatchTopK: one training batch sets its inference threshold
    return m.eval()


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("variant", sorted(CASES))
def test_export_reproduces_encode_decode(variant, normalized, tmp_path):
    params, arch = CASES[variant]
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(0)) * 2 + 0.5  # [B, d] raw rows
    m = trained_model(variant, params, x)
    if normalized:  # trained on (x - mean) / scale: the export must read raw rows
        m = checkpoint.Normalized(m, torch.linspace(-1.0, 2.0, D), 1.7)
    checkpoint.save(tmp_path / "dict", m, {"store": {"hook": "blocks.0.hook_resid_post", "path": None}})
    out = export_saelens(tmp_path / "dict", tmp_path / "sl")
    cfg, w, run = saelens_forward(out)
    assert cfg["architecture"] == arch and (cfg["d_in"], cfg["d_sae"]) == (D, K)
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert cfg["metadata"]["sae_lens_version"] >= "6"  # else SAELens reads it as the pre-6 layout
    biases = ("b_gate", "r_mag", "b_mag") if arch == "gated" else ("b_enc",)  # SAELens' GatedSAE: no b_enc
    assert w["W_enc"].shape == (D, K) and w["W_dec"].shape == (K, D) and w["b_dec"].shape == (D,)
    assert set(w) == {"W_enc", "W_dec", "b_dec", *biases, *(["threshold"] if arch == "jumprelu" else [])}
    assert all(w[b].shape == (K,) for b in biases)
    if arch == "topk":
        assert cfg["k"] == params["topk"]
    with torch.no_grad():
        ref = m(x, sample=False)
    z, x_hat = run(x)
    assert (z != 0).sum() > 0 and (z == 0).sum() > 0
    torch.testing.assert_close(z, ref.codes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_hat, ref.x_hat, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["vae", "vaease", "sae_kl"])
def test_unmappable_variants_are_refused(variant, tmp_path):
    checkpoint.save(tmp_path / "dict", make(variant, D, K), {})
    with pytest.raises(ExportError, match="no SAELens architecture"):
        export_saelens(tmp_path / "dict", tmp_path / "sl")
    assert not (tmp_path / "sl").exists()


def test_deep_sae_and_softplus_lse_are_refused(tmp_path):
    checkpoint.save(tmp_path / "a", make("sae_l1", D, K, encoder="mlp"), {})
    with pytest.raises(ExportError, match="deep encoder"):
        export_saelens(tmp_path / "a", tmp_path / "sl")
    checkpoint.save(tmp_path / "b", make("lse", D, K, activation="softplus"), {})
    with pytest.raises(ExportError, match="softplus"):
        export_saelens(tmp_path / "b", tmp_path / "sl")


def test_command_line_entry(tmp_path, capsys):
    checkpoint.save(tmp_path / "dict", make("sae_topk_auxk", D, K, topk=3), {})
    assert main([str(tmp_path / "dict"), str(tmp_path / "sl")]) == 0
    assert {p.name for p in (tmp_path / "sl").iterdir()} == {"sae_weights.safetensors", "cfg.json"}
    assert main([str(tmp_path / "nothing"), str(tmp_path / "sl2")]) == 2
    assert "not a (finished) checkpoint" in capsys.readouterr().err


def test_actdict_export_subcommand(tmp_path):
    from actdict.cli import main as cli_main

    checkpoint.save(tmp_path / "dict", make("sae_jumprelu", D, K), {})
    assert cli_main(["export", str(tmp_path / "dict"), str(tmp_path / "sl")]) == 0
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["architecture"] == "jumprelu"
    checkpoint.save(tmp_path / "vae", make("vae", D, K), {})
    assert cli_main(["export", str(tmp_path / "vae"), str(tmp_path / "sl2")]) == 2


def test_wrong_folder_names_the_dictionaries_to_pass(tmp_path, capsys):
    """A run folder, a misspelt name or the dicts folder itself is refused with the dictionaries there."""
    for name in ("b_sae", "a_sae"):
        checkpoint.save(tmp_path / "run" / "dicts" / name, make("sae_l1", D, K), {})
    dicts = tmp_path / "run" / "dicts"
    for wrong in (tmp_path / "run", dicts / "a_sea", dicts):
        assert main([str(wrong), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"{wrong} has no cfg.json" in err
        assert f"the trained dictionaries in {dicts}: ['a_sae', 'b_sae'] (pass {dicts}/NAME)" in err
    assert main([str(tmp_path / "elsewhere" / "x"), str(tmp_path / "out")]) == 2
    assert "trained dictionaries" not in capsys.readouterr().err  # nothing near: no hint
    assert not (tmp_path / "out").exists()


def test_export_records_where_the_dictionary_came_from(tmp_path):
    store = {"path": str(tmp_path / "no-store"), "hook": "blocks.3.hook_resid_post"}  # gone: no model name
    checkpoint.save(tmp_path / "dict", make("sae_l1", D, K, lam1=0.1), {"store": store})
    assert main([str(tmp_path / "dict"), str(tmp_path / "sl")]) == 0
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["metadata"] | {"sae_lens_training_version": None} == {
        "sae_lens_version": "6.0.0", "sae_lens_training_version": None, "hook_name": store["hook"],
        "model_name": None, "actdict_variant": "sae_l1", "actdict_params": {"lam1": 0.1, "lam2": 0.2},
        "actdict_store": store["path"]}
    assert (cfg["hook_name"], cfg["d_in"], cfg["d_sae"]) == (store["hook"], D, K)
    checkpoint.save(tmp_path / "dict2", make("sae_l1", D, K), {"store": store | {"model": "pythia-70m"}})
    assert main([str(tmp_path / "dict2"), str(tmp_path / "sl2")]) == 0  # the checkpoint names its model
    assert json.loads((tmp_path / "sl2" / "cfg.json").read_text())["metadata"]["model_name"] == "pythia-70m"


def test_an_export_of_a_local_copys_dictionary_says_how_to_name_its_model(tmp_path, capsys):
    """A store harvested from a local copy (harvest.model=/path/to/pythia-70m-deduped) wrote that folder as
    the SAELens cfg's model_name, which SAELens cannot load by name, with no word; the export now says so,
    and --model-name writes the hub name in both places SAELens reads it."""
    local = tmp_path / "pythia-70m-deduped"
    local.mkdir()
    store = {"path": str(tmp_path / "store"), "hook": "blocks.2.hook_resid_post", "model": str(local)}
    checkpoint.save(tmp_path / "dict", make("sae_l1", D, K), {"store": store})
    assert main([str(tmp_path / "dict"), str(tmp_path / "sl")]) == 0
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["model_name"] == str(local)
    assert capsys.readouterr().err == (
        f"actdict export: note: its model_name is the local folder {str(local)!r} the store was harvested "
        "from; SAELens loads an SAE's model by its hub name: add --model-name NAME (e.g. "
        "EleutherAI/pythia-70m-deduped) to write that instead\n")
    hub = "EleutherAI/pythia-70m-deduped"
    assert main([str(tmp_path / "dict"), str(tmp_path / "sl2"), "--model-name", hub]) == 0
    cfg = json.loads((tmp_path / "sl2" / "cfg.json").read_text())
    assert (cfg["model_name"], cfg["metadata"]["model_name"]) == (hub, hub) and capsys.readouterr().err == ""
    checkpoint.save(tmp_path / "hub", make("sae_l1", D, K), {"store": store | {"model": hub}})
    assert main([str(tmp_path / "hub"), str(tmp_path / "sl3")]) == 0 and capsys.readouterr().err == ""


def test_an_export_never_lands_on_a_checkpoint_or_in_dicts_or_over_files(tmp_path, capsys):
    """OUT = the checkpoint's folder, another checkpoint, a folder in the run's dicts/ or a non-empty
    folder is refused before anything is written; an existing export is replaced only with --overwrite."""
    dicts = tmp_path / "run" / "dicts"
    for name in ("a", "b"):
        checkpoint.save(dicts / name, make("sae_l1", D, K, lam1=0.1 if name == "a" else 0.2), {})
    before = {p: p.read_bytes() for p in dicts.rglob("*") if p.is_file()}
    held = "holds an actdict checkpoint"
    for out, why in ((dicts / "a", held), (dicts / "b", held), (dicts / "a2", "in a run's dicts")):
        assert main([str(dicts / "a"), str(out)]) == 2 and why in capsys.readouterr().err
    assert {p: p.read_bytes() for p in dicts.rglob("*") if p.is_file()} == before
    assert not (dicts / "a2").exists()
    assert main([str(dicts / "a"), str(tmp_path / "sl")]) == 0
    assert main([str(dicts / "b"), str(tmp_path / "sl")]) == 2
    assert "holds an export already; pass another folder, or --overwrite" in capsys.readouterr().err
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["metadata"]["actdict_params"]["lam1"] == 0.1
    assert main([str(dicts / "b"), str(tmp_path / "sl"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["metadata"]["actdict_params"]["lam1"] == 0.2
    (tmp_path / "sl" / ".cfg.json.tmp-1234abcd").write_text("{")  # a killed export's leftover: no matter
    other = tmp_path / "run2" / "dicts"  # another run's dicts folder
    checkpoint.save(other / "x", make("sae_l1", D, K), {})
    assert main([str(dicts / "a"), str(other / "a_export")]) == 2
    assert "in a run's dicts folder" in capsys.readouterr().err
    assert main([str(dicts / "b"), str(tmp_path / "sl"), "--overwrite"]) == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main([str(dicts / "b"), str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "holds other files: ['todo.txt']" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]
    for flag in ([], ["--overwrite"]):  # a file where the folder should be: one line, the file kept
        assert main([str(dicts / "b"), str(tmp_path / "notes" / "todo.txt"), *flag]) == 2
        assert "todo.txt is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


@pytest.mark.parametrize("variant", ["sae_l1", "sae_topk", "sae_jumprelu"])
def test_export_cfg_asks_saelens_for_no_other_transformation(variant, tmp_path):
    """The cfg fields that would make SAELens compute something other than ``saelens_forward`` are off
    (input normalisation, reshaping, TopK's rescaling by decoder norms), and SAELens <= 5's activation keys
    name the same activation (TopK with its k) as the 6.x architecture."""
    params, arch = CASES[variant]
    checkpoint.save(tmp_path / "dict", make(variant, D, K, **params), {})
    cfg = json.loads((export_saelens(tmp_path / "dict", tmp_path / "sl") / "cfg.json").read_text())
    assert (cfg["normalize_activations"], cfg["reshape_activations"]) == ("none", "none")
    assert cfg["dtype"] == "float32"
    assert cfg["activation_fn"] == ("topk" if arch == "topk" else "relu")
    if arch == "topk":
        assert cfg["rescale_acts_by_decoder_norm"] is False
        assert cfg["activation_fn_kwargs"] == {"k": params["topk"]} and cfg["k"] == params["topk"]
    else:
        assert cfg["activation_fn_kwargs"] == {} and "rescale_acts_by_decoder_norm" not in cfg


def test_export_opens_no_store_url_that_a_checkpoint_names(tmp_path):
    """A checkpoint from someone else may name any URL as its store (http://their-host/..., s3://...): looking
    a model name up there made `actdict export` send requests to it (with the reader's credentials, for an
    object store). Only a local store is looked at; the URL is recorded as it is."""
    from actdict.harvest.store import write_vectors

    write_vectors("memory://exp/store", torch.ones(16, D), manifest={"model": "their-model"},
                  shard_rows=8, chunk_rows=4)
    store = {"path": "memory://exp/store", "hook": "vectors"}
    checkpoint.save(tmp_path / "dict", make("sae_l1", D, K), {"store": store})
    assert main([str(tmp_path / "dict"), str(tmp_path / "sl")]) == 0
    meta = json.loads((tmp_path / "sl" / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] is None and meta["actdict_store"] == "memory://exp/store"
