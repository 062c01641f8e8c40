"""SAELens import (``actdict import``): an SAE in SAELens' files becomes a dictionary of a run folder that
computes what SAELens computes (its formulas written out in tests/test_export.py), and analysis reads it."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from actdict.train import checkpoint
from actdict.train.export import export_saelens
from actdict.train.saelens_import import NotImportable, import_saelens, main
from tests.test_export import CASES, D, K, saelens_forward, trained_model


def _x():
    return torch.randn(40, D, generator=torch.Generator().manual_seed(1)) * 2 + 0.5  # [B, d] raw rows


def _write(folder, cfg, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def _saelens(arch="standard", b_dec_in=True, dtype=torch.float32, **cfg):
    g = torch.Generator().manual_seed(3)
    t = {"W_enc": torch.randn(D, K, generator=g), "b_enc": torch.randn(K, generator=g) * 0.3,
         "W_dec": torch.randn(K, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    if arch == "jumprelu":
        t["threshold"] = torch.linspace(-0.5, 1.5, K)  # some <= 0: z = relu(p) there
    if arch == "gated":  # no b_enc: a gate bias and the magnitude path's scale and bias
        t |= {"b_gate": t.pop("b_enc"), "r_mag": torch.linspace(-0.5, 0.5, K),
              "b_mag": torch.linspace(-1, 1, K)}
    base = {"d_in": D, "d_sae": K, "architecture": arch, "normalize_activations": "none",
            "apply_b_dec_to_input": b_dec_in, "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    return base | cfg, {k: v.to(dtype) for k, v in t.items()}


def _same(folder, model, x, atol=1e-5):
    cfg, w, run = saelens_forward(folder)
    z, x_hat = run(x)
    with torch.no_grad():
        out = model(x, sample=False)
    torch.testing.assert_close(out.codes, z, atol=atol, rtol=1e-5)
    torch.testing.assert_close(out.x_hat, x_hat, atol=atol, rtol=1e-5)
    return z


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("variant", sorted(CASES))
def test_an_export_imported_back_computes_what_the_exported_one_computed(variant, normalized, tmp_path):
    params, arch = CASES[variant]
    x = _x()
    m = trained_model(variant, params, x)
    if normalized:
        m = checkpoint.Normalized(m, torch.linspace(-1.0, 2.0, D), 1.7)
    checkpoint.save(tmp_path / "run" / "dicts" / "orig", m, {"finished": True})
    export_saelens(tmp_path / "run" / "dicts" / "orig", tmp_path / "export")
    dest, record = import_saelens(tmp_path / "export", tmp_path / "run2" / "dicts" / "back")
    back, rec = checkpoint.load(dest)
    assert rec == record and rec["imported"]["architecture"] == arch and rec["finished"]
    assert rec["variant"] == {"standard": "sae_l1", "topk": "sae_topk", "jumprelu": "sae_jumprelu",
                              "gated": "sae_gated"}[arch]
    with torch.no_grad():
        want, got = m(x, sample=False), back(x, sample=False)
    torch.testing.assert_close(got.x_hat, want.x_hat, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.codes, want.codes, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
@pytest.mark.parametrize("b_dec_in", [True, False])
def test_an_saelens_sae_is_read_as_saelens_computes_it(arch, b_dec_in, tmp_path):
    cfg, t = _saelens(arch, b_dec_in, **({"k": 4} if arch == "topk" else {}))
    src = _write(tmp_path / "sae", cfg, t)
    dest, rec = import_saelens(src, tmp_path / "run" / "dicts" / "pre")
    z = _same(src, checkpoint.load(dest)[0], _x())
    assert (z > 0).any() and (z == 0).any()  # both sides of every gate exercised
    if arch == "jumprelu":  # the thresholds <= 0 passed every positive pre-activation
        assert rec["imported"]["apply_b_dec_to_input"] is b_dec_in
    assert rec["store"] == {"hook": "blocks.1.hook_resid_post"}
    assert rec["imported"]["from"] == str(src.resolve())


def test_older_layouts_and_bf16_weights_import(tmp_path):
    cfg, t = _saelens("topk", dtype=torch.bfloat16)
    ref = _write(tmp_path / "ref", cfg | {"k": 3}, {k: v.float() for k, v in t.items()})  # for the formulas
    for key in ("architecture", "metadata"):  # SAELens <= 5: activation_fn and a top-level hook_name
        cfg.pop(key)
    cfg |= {"activation_fn": "topk", "activation_fn_kwargs": {"k": 3}, "hook_name": "blocks.0.hook_mlp_out",
            "dtype": "bfloat16"}
    src = _write(tmp_path / "old", cfg, t)
    dest, rec = import_saelens(src, tmp_path / "run" / "dicts" / "old")
    assert rec["params"]["topk"] == 3 and rec["store"] == {"hook": "blocks.0.hook_mlp_out"}
    _same(ref, checkpoint.load(dest)[0], _x())  # the bf16 weights, read as float32
    cfg.pop("hook_name")
    cfg.pop("activation_fn")
    cfg.pop("activation_fn_kwargs")
    _, rec = import_saelens(_write(tmp_path / "std", cfg, t), tmp_path / "run" / "dicts" / "std")
    assert rec["imported"]["architecture"] == "standard" and "store" not in rec  # no hook: none recorded
    assert rec["imported"]["apply_b_dec_to_input"] is True  # SAELens' default


def test_a_saelens_5_topk_sae_saved_as_standard_with_a_topk_activation_imports_as_topk(tmp_path):
    cfg, t = _saelens("topk")
    ref = _write(tmp_path / "ref", cfg | {"k": 3}, t)  # SAELens 6's spelling, for the formulas
    old = cfg | {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}}
    dest, rec = import_saelens(_write(tmp_path / "old", old, t), tmp_path / "run" / "dicts" / "old")
    assert rec["variant"] == "sae_topk" and rec["params"]["topk"] == 3
    assert rec["imported"]["architecture"] == "topk"
    z = _same(ref, checkpoint.load(dest)[0], _x())
    assert ((z != 0).sum(1) == 3).all()
    with pytest.raises(NotImportable, match=r"activation function 'tanh-relu': no actdict variant computes"):
        import_saelens(_write(tmp_path / "tanh", cfg | {"architecture": "standard",
                                                        "activation_fn_str": "tanh-relu"}, t),
                       tmp_path / "run" / "dicts" / "tanh")


def test_a_finetuning_scaling_factor_is_applied_to_the_codes_before_decoding_as_saelens_5_did(tmp_path):
    cfg, t = _saelens()
    scale = torch.linspace(0.5, 2.0, K)
    ref = _write(tmp_path / "ref", cfg, t | {"W_dec": t["W_dec"] * scale[:, None]})  # the same SAE, folded
    for name in ("finetuning_scaling_factor", "scaling_factor"):  # as save_model wrote it; an older spelling
        src = _write(tmp_path / name, cfg | {"finetuning_scaling_factor": True}, t | {name: scale})
        dest, _ = import_saelens(src, tmp_path / "run" / "dicts" / name)
        _same(ref, checkpoint.load(dest)[0], _x())  # SAELens' codes, and x_hat = (z * scale) W_dec + b_dec
    ones = _write(tmp_path / "ones", cfg, t | {"scaling_factor": torch.ones(K)})  # SAELens drops ones
    dest, _ = import_saelens(ones, tmp_path / "run" / "dicts" / "ones")
    _same(_write(tmp_path / "plain", cfg, t), checkpoint.load(dest)[0], _x())
    for c, extra, message in ((cfg, {"scaling_factor": scale}, r"hold scaling_factor, which its cfg does"),
                              (cfg | {"finetuning_scaling_factor": True}, {}, r"no finite scaling factor")):
        with pytest.raises(NotImportable, match=message):
            import_saelens(_write(tmp_path / "bad", c, t | extra), tmp_path / "run" / "dicts" / "bad")


def test_the_hook_of_an_early_saelens_cfg_hook_point_is_recorded_for_analysis_to_check(tmp_path):
    cfg, t = _saelens()
    cfg.pop("metadata")  # as early SAELens wrote it (gpt2-small-res-jb's cfg.json): hook_point, no hook_name
    cfg |= {"hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8}
    _, rec = import_saelens(_write(tmp_path / "old", cfg, t), tmp_path / "run" / "dicts" / "old")
    assert rec["store"] == {"hook": "blocks.8.hook_resid_pre"}
    assert rec["imported"]["hook_name"] == "blocks.8.hook_resid_pre"


@pytest.mark.parametrize("change, message", [
    ({"architecture": "transcoder"}, r"architecture 'transcoder' has no actdict variant"),
    ({"normalize_activations": "expected_average_only_in"}, r"its scale is computed from data at run time"),
    ({"architecture": "topk", "k": 3, "rescale_acts_by_decoder_norm": True}, r"rescale_acts_by_decoder_norm"),
    ({"architecture": "topk"}, r"a topk SAE needs an integer k in its cfg, got None"),
    ({"d_in": D + 1}, r"do not match d_in=8, d_sae=12"),
    ({"architecture": "jumprelu"}, r"'threshold': None"),  # a jumprelu cfg without its thresholds
])
def test_what_does_not_map_is_refused_saying_why(change, message, tmp_path):
    cfg, t = _saelens()
    with pytest.raises(NotImportable, match=message):
        import_saelens(_write(tmp_path / "sae", cfg | change, t), tmp_path / "run" / "dicts" / "a")
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_files_and_places_are_refused(tmp_path, capsys):
    cfg, t = _saelens()
    src = _write(tmp_path / "sae", cfg, t)
    with pytest.raises(NotImportable, match="holds no SAELens SAE"):
        import_saelens(tmp_path / "none", tmp_path / "run" / "dicts" / "a")
    np.save(tmp_path / "vectors.npy", np.zeros((4, D), np.float32))  # a newcomer's own vectors
    assert main([str(tmp_path / "vectors.npy"), str(tmp_path / "run" / "dicts" / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python -m actdict.harvest.vectors FILE STORE" in err
    assert "vectors.npy is a file: actdict import reads an SAELens SAE's folder (cfg.json + " in err
    with pytest.raises(NotImportable, match="NaN or infinite"):
        import_saelens(_write(tmp_path / "nan", cfg, t | {"b_dec": torch.full((D,), float("nan"))}),
                       tmp_path / "run" / "dicts" / "a")
    with pytest.raises(NotImportable, match=r"W_enc \(int8\) not floating point \(quantised weights"):
        import_saelens(_write(tmp_path / "int8", cfg, t | {"W_enc": t["W_enc"].to(torch.int8)}),
                       tmp_path / "run" / "dicts" / "a")
    with pytest.raises(NotImportable, match=r"import into a run folder's dicts/"):
        import_saelens(src, tmp_path / "run" / "a")
    for hook in ("", "blocks.1/hook_resid_post", ".."):  # was recorded, and analysis found no such hook
        with pytest.raises(NotImportable, match=rf"^--hook '{hook}' cannot name a store's hook"):
            import_saelens(src, tmp_path / "run" / "dicts" / "a", hook=hook)
    assert not (tmp_path / "run").exists()
    assert main([str(src), str(tmp_path / "run" / "dicts" / "a")]) == 0
    assert "standard SAE as sae_l1 (d 7, k 12, hook blocks.1.hook_resid_post)" in capsys.readouterr().out
    assert main([str(src), str(tmp_path / "run" / "dicts" / "a")]) == 2
    assert "an imported SAE already: pass --overwrite" in capsys.readouterr().err
    from actdict.cli import main as actdict

    assert actdict(["import", str(src), str(tmp_path / "run" / "dicts" / "a"), "--overwrite"]) == 0
    own = checkpoint.load(tmp_path / "run" / "dicts" / "a")[0]
    checkpoint.save(tmp_path / "run" / "dicts" / "trained", own, {"finished": True, "config_hash": "abc"})
    assert main([str(src), str(tmp_path / "run" / "dicts" / "trained"), "--overwrite"]) == 2  # a run's own
    assert "pass a new name" in capsys.readouterr().err


def test_analysis_reads_an_imported_sae_beside_the_runs_own_and_checks_its_hook(tmp_path):
    from actdict.analyze.config import AnalyzeConfig
    from actdict.analyze.run import AnalyzeError
    from actdict.analyze.run import main as analyze
    from actdict.config import Common
    from actdict.errors import ActdictError
    from actdict.harvest.store import write_vectors
    from actdict.train.config import DictConfig, TrainConfig
    from actdict.train.data import make_split
    from actdict.train.run import main as train

    x = np.random.default_rng(0).standard_normal((1024, D)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, shard_rows=512, chunk_rows=64)
    alone = Common(run_dir=str(tmp_path / "alone"), seed=3, store=store.path)  # imported SAEs only: no split
    cfg, t = _saelens(metadata={"hook_name": store.hook})
    import_saelens(_write(tmp_path / "sae0", cfg, t), tmp_path / "alone" / "dicts" / "pre")
    analyze(alone, AnalyzeConfig(device="cpu", n_features=2))
    want = make_split(store.num_chunks, TrainConfig().test_fraction, 3)["test_chunks"]
    assert json.loads((tmp_path / "alone" / "summary.json").read_text())["test_chunks"] == want
    assert not (tmp_path / "alone" / "split.json").exists()  # computed, not written
    common = Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path)
    train(common, TrainConfig(dicts=[DictConfig("own", "sae_l1", k=K)], epochs=1, batch_size=128,
                              device="cpu"))
    cfg, t = _saelens(metadata={"hook_name": store.hook})
    src = _write(tmp_path / "sae", cfg, t)
    import_saelens(src, tmp_path / "run" / "dicts" / "pre")
    analyze(common, AnalyzeConfig(device="cpu", n_features=2))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    pre = summary["models"]["pre"]
    rows = json.loads((tmp_path / "run" / "split.json").read_text())["test_chunks"]
    test = torch.from_numpy(np.concatenate([store.read_chunk(c).acts for c in rows]))
    z, x_hat = saelens_forward(src)[2](test)
    assert pre["variant"] == "sae_l1" and pre["l0"] == pytest.approx(float((z != 0).sum(1).double().mean()))
    assert pre["re_det"] == pytest.approx(float((test - x_hat).pow(2).sum(1).double().mean()), rel=1e-5)
    assert set(pre["similar"]) == {"own"}  # compared with the run's own dictionary
    _write(src, cfg | {"metadata": {"hook_name": "blocks.9.hook_resid_post"}}, t)
    import_saelens(src, tmp_path / "run" / "dicts" / "pre", overwrite=True)
    with pytest.raises(AnalyzeError, match=r"different hooks \(\{'own': 'vectors', 'pre': 'blocks.9"):
        analyze(common, AnalyzeConfig(device="cpu"))
    with pytest.raises(ActdictError, match=r"no hook 'blocks.9.hook_resid_post'; valid hooks: \['vectors"):
        analyze(common, AnalyzeConfig(device="cpu", dicts=["pre"]))
    assert main([str(src), str(tmp_path / "run" / "dicts" / "pre"), "--overwrite", "--hook", store.hook]) == 0
    analyze(common, AnalyzeConfig(device="cpu"))  # --hook: read from the store's name for those activations
    again = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]["pre"]
    assert again["re_det"] == pytest.approx(pre["re_det"], rel=1e-6)
    rec = checkpoint.finished_record(tmp_path / "run" / "dicts" / "pre")
    assert rec["store"] == {"hook": store.hook} and rec["imported"]["hook_name"] == "blocks.9.hook_resid_post"


def test_a_training_that_replaces_an_imported_sae_says_so(tmp_path, capsys):
    from actdict.config import Common
    from actdict.harvest.store import write_vectors
    from actdict.train.config import DictConfig, TrainConfig
    from actdict.train.run import main as train

    x = np.random.default_rng(0).standard_normal((512, D)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, shard_rows=256, chunk_rows=64)
    src = _write(tmp_path / "sae", *_saelens(metadata={"hook_name": store.hook}))
    import_saelens(src, tmp_path / "run" / "dicts" / "pre")
    train(Common(run_dir=str(tmp_path / "run"), seed=0, store=store.path),
          TrainConfig(dicts=[DictConfig("pre", "sae_l1", k=K)], epochs=1, batch_size=128, device="cpu"))
    want = (f"train: pre: its finished checkpoint will be replaced (it holds an SAE imported from "
            f"{src.resolve()} (actdict import)); set run_dir, or rename the dictionary, to keep both")
    assert want in capsys.readouterr().out
    assert "imported" not in checkpoint.load(tmp_path / "run" / "dicts" / "pre")[1]


@pytest.mark.parametrize("name", [".hidden", "n" * 201])
def test_a_name_that_train_refuses_is_refused_before_anything_is_written(name, tmp_path):
    src = _write(tmp_path / "sae", *_saelens())
    with pytest.raises(NotImportable, match=r"cannot name a dictionary: .*at most 200 bytes"):
        import_saelens(src, tmp_path / "run" / "dicts" / name)  # analysis skips it, or its pages' names fail
    assert not (tmp_path / "run").exists()


def test_an_imported_sae_exported_again_keeps_its_model_and_hook(tmp_path):
    """export -> import -> export: the second export names the model and hook the first did (the import
    records them; the re-export wrote model_name "" and null, so SAELens lost which model it reads)."""
    params, _ = CASES["sae_topk"]
    m = trained_model("sae_topk", params, _x())
    record = {"finished": True, "store": {"hook": "blocks.1.hook_resid_post", "model": "tiny-model"}}
    checkpoint.save(tmp_path / "run" / "dicts" / "orig", m, record)
    export_saelens(tmp_path / "run" / "dicts" / "orig", tmp_path / "e1")
    import_saelens(tmp_path / "e1", tmp_path / "run2" / "dicts" / "back")
    export_saelens(tmp_path / "run2" / "dicts" / "back", tmp_path / "e2")
    first, again = (json.loads((tmp_path / e / "cfg.json").read_text()) for e in ("e1", "e2"))
    assert first["model_name"] == again["model_name"] == again["metadata"]["model_name"] == "tiny-model"
    assert again["hook_name"] == again["metadata"]["hook_name"] == "blocks.1.hook_resid_post"


def test_analysis_notes_an_imported_sae_of_another_model(tmp_path, capsys, monkeypatch):
    """An SAELens SAE of another model than the store's, with the same hook name and width (a hook name is
    every TransformerLens model's), is analysed with a note naming both models; the same model spelled with
    its organisation (the store's) or without (SAELens') gets none."""
    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common
    from actdict.harvest.store import write_vectors

    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [str(i) for i in ids])  # no tokenizer
    x = np.random.default_rng(0).standard_normal((512, D)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, {"model": "EleutherAI/pythia-70m-deduped"},
                          hook="blocks.1.hook_resid_post", shard_rows=512, chunk_rows=64)
    common = Common(run_dir=str(tmp_path / "run"), store=store.path)
    for sae_model, said in (("gpt2-small", True), ("pythia-70m-deduped", False)):
        cfg, t = _saelens(metadata={"hook_name": store.hook, "model_name": sae_model})
        import_saelens(_write(tmp_path / "sae", cfg, t), tmp_path / "run" / "dicts" / "pre", overwrite=True)
        capsys.readouterr()
        run.main(common, AnalyzeConfig(device="cpu", n_features=2))
        note = ("analyze: note: pre was imported from an SAE of 'gpt2-small' (its cfg.json), but the store "
                "holds activations of 'EleutherAI/pythia-70m-deduped'")
        assert (note in capsys.readouterr().out) == said


def test_a_folder_of_vectors_parts_is_pointed_to_the_vectors_import(tmp_path, capsys):
    """Vectors may come as a folder of parts (python -m actdict.harvest.vectors FOLDER STORE); actdict import
    of such a folder said only that its cfg.json is missing. It now names the vectors import, as for one
    vectors file; an SAE's folder without its cfg.json, or a folder of other files, says nothing of it."""
    (tmp_path / "emb").mkdir()
    for i in range(2):
        np.save(tmp_path / "emb" / f"part-{i}.npy", np.zeros((4, D), np.float32))
    assert main([str(tmp_path / "emb"), str(tmp_path / "run" / "dicts" / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(
        "cfg.json is missing; to import the vectors of its .npy files into a store: python -m "
        "actdict.harvest.vectors FOLDER STORE (docs/embeddings.md)")
    cfg, t = _saelens()
    (_write(tmp_path / "sae", cfg, t) / "cfg.json").unlink()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    for f in ("sae", "notes"):
        assert main([str(tmp_path / f), str(tmp_path / "run" / "dicts" / "v")]) == 2
        assert capsys.readouterr().err.strip().endswith("cfg.json is missing")


def test_an_export_or_import_into_a_folder_it_cannot_write_is_one_line(tmp_path, capsys, read_only):
    """A folder that refuses new files (chmod a-w, another user's) ended actdict export and actdict import
    in a PermissionError traceback from their mkdir; each now says which folder, exit status 2."""
    from actdict.cli import main as actdict
    from actdict.train.protocol import make

    checkpoint.save(tmp_path / "run" / "dicts" / "sae", make("sae_l1", D, K), {})
    read_only("ro/out")
    assert actdict(["export", str(tmp_path / "run" / "dicts" / "sae"), str(tmp_path / "ro" / "out")]) == 2
    assert capsys.readouterr().err == (f"actdict: FolderNotWritable: cannot write in {tmp_path}/ro/out "
                                       "(Permission denied), where the SAELens files go: make it writable, "
                                       "or pass another folder\n")
    assert actdict(["export", str(tmp_path / "run" / "dicts" / "sae"), str(tmp_path / "sl")]) == 0
    read_only("run/dicts")
    assert actdict(["import", str(tmp_path / "sl"), str(tmp_path / "run" / "dicts" / "b")]) == 2
    assert capsys.readouterr().err == (f"actdict: FolderNotWritable: cannot write in {tmp_path}/run/dicts "
                                       "(Permission denied), where the imported SAE's files go: make it "
                                       "writable, or import it into another run folder\n")
    assert not (tmp_path / "run" / "dicts" / "b").exists()
