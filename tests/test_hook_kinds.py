"""Every kind of hook point a researcher may name, through the stages.

The models' hooks come in shapes: one vector per token ([B, ctx, d]: resid, attn_out, mlp.hook_post,
ln*.hook_scale with d=1), one per token per head ([B, ctx, heads, d_head]: attn.hook_q/k/v/z, stored as
heads*d_head), and none per token (attn.hook_pattern / hook_attn_scores [B, heads, q, k], rotary angles
[1, ctx, d], the input ids [B, ctx]). actdict stores one row per token: the others are refused before
anything is written.
"""

import json
import math
import warnings

import pytest
import torch
from test_harvest import TEXTS, harvest

from actdict.analyze import run
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.logits import not_residual, unembedding
from actdict.analyze.splice import Windows, ce_caveat, splice_eval
from actdict.cli import main as cli
from actdict.config import Common
from actdict.harvest.models import HookError
from actdict.harvest.store import list_hooks, open_store
from actdict.train.protocol import Dictionary, Forward, make

FINAL = "ln_final.hook_normalized"  # the final norm's output, before its weight


def test_an_attention_pattern_is_refused_before_anything_is_written(tmp_path):
    """It wrote a manifest with d = ctx*ctx, then stopped on a raw IndexError in store_rows."""
    said = (r"hook 'blocks\.0\.attn\.hook_pattern' \(it holds attention weights or scores, \[batch, heads, "
            r"query, key\]; its activation for 2 windows of 4 tokens has shape \[2, 12, 4, 4\] .*\) of "
            r"all-MiniLM-L6-v2 is not one vector per token\. actdict stores one row per token")
    with pytest.raises(HookError, match=said):
        harvest(tmp_path / "run", hooks=["blocks.0.attn.hook_pattern"], max_tokens=40)
    assert not (tmp_path / "run").exists()


def test_scores_with_as_many_heads_as_ctx_are_refused_too(tmp_path):
    """MiniLM has 12 heads: at ctx=12 the scores [B, 12, 12, 12] read as [B, ctx, 144], and their rows were
    stored without a word (each 'row' a head's scores, not a token's vector)."""
    with pytest.raises(HookError, match=r"'blocks\.1\.attn\.hook_attn_scores' .*shape \[2, 12, 4, 4\]"):
        harvest(tmp_path / "run", hooks=["blocks.1.hook_resid_post", "blocks.1.attn.hook_attn_scores"],
                ctx=12, max_tokens=40)
    assert not (tmp_path / "run").exists()


def test_a_pattern_leaves_out_the_hooks_it_matches_that_are_not_per_token(tmp_path, capsys):
    common, _ = harvest(tmp_path / "run", hooks=["blocks.0.attn.hook_[pz]*"], max_tokens=40)
    out = capsys.readouterr().out
    assert ("harvest: left out the hooks the patterns match that it cannot store (why, for each): "
            "['blocks.0.attn.hook_pattern'] (it holds attention weights") in out
    store = open_store(common.store_path, "blocks.0.attn.hook_z")  # [B, ctx, 12, 32] stored as 12*32
    assert store.d == 384 and len(store) == 40
    assert list_hooks(common.store_path) == ["blocks.0.attn.hook_z"]
    with pytest.raises(HookError, match=r"'blocks\.0\.attn\.hook_pattern' .*\) of all-MiniLM-L6-v2 \(all "
                                        r"that 'blocks\.0\.attn\.hook_pat\*' matches\) is not one vector"):
        harvest(tmp_path / "other", hooks=["blocks.0.attn.hook_pat*"], max_tokens=40)


def test_rotary_angles_and_gated_off_hooks_are_refused(tmp_path, lm):
    for hook, why in (("blocks.0.attn.hook_cos", r"it holds rotary angles.*shape \[1, 4, 16\]"),
                      ("blocks.0.attn.hook_result", r"it does not fire in this model's forward: gated off"),
                      ("embed.hook_in", r"it holds int64 values")):
        with pytest.raises(HookError, match=rf"'{hook}' \({why}"):
            harvest(tmp_path / "run", model=str(lm.path), hooks=[hook], max_tokens=40)
        assert not (tmp_path / "run").exists()


def test_the_dry_run_refuses_a_hook_named_for_no_vector_per_token(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nharvest: {{hooks: [blocks.0.hook_resid_post, "
                   f"blocks.0.attn.hook_pattern], max_tokens: 64, source: {{kind: files, path: {TEXTS}}}}}\n")
    for dry in (["--dry-run"], []):  # the same words as the harvest, before any model is loaded
        assert cli(["harvest", str(cfg), *dry]) == 2
        err = capsys.readouterr().err
        assert ("HookError: hook 'blocks.0.attn.hook_pattern' (it holds attention weights or scores, [batch, "
                "heads, query, key]) is not one vector per token. actdict stores one row per token") in err
    assert not (tmp_path / "run").exists()


class Identity(Dictionary):
    variant = "test_identity"

    def forward(self, x, sample=True):
        return Forward(x, x, torch.zeros_like(x), {})


@pytest.mark.parametrize("hook, d", [("hook_embed", 512), ("blocks.1.attn.hook_z", 8 * 64),
                                     ("blocks.1.mlp.hook_post", 2048), ("blocks.1.ln2.hook_scale", 1),
                                     ("ln_final.hook_normalized", 512)])
def test_the_splice_puts_each_kind_of_row_back_in_its_own_shape(lm, hook, d):
    """hook_z's rows are [heads*d_head]: the reconstruction goes back as [heads, d_head] (the identity
    leaves the logits as they were); zeroing a LayerNorm's scale divides by 0, and CE recovered is then
    n/a, said so (it was n/a without a word). TransformerLens' warning that a hook edited a norm's hook is not
    passed on (at a norm's hooks a splice is that edit)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.cat([torch.full((2, 1), lm.bos_id), torch.randint(0, 50000, (2, 12), generator=g)], 1)
    spliced = torch.ones(tokens.shape, dtype=torch.bool)
    spliced[:, 0] = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = splice_eval(lm.bridge, Windows(tokens, spliced, torch.ones_like(spliced)), hook,
                          {"id": Identity(d, d)})
    assert [str(w.message) for w in seen if "hook_normalized" in str(w.message)] == []
    assert res["models"]["id"]["ce"] == pytest.approx(res["ce_clean"], abs=1e-5)
    assert res["models"]["id"]["kl"] == pytest.approx(0.0, abs=1e-6)
    if hook.endswith("hook_scale"):
        assert math.isnan(res["ce_zero"]) and math.isnan(res["models"]["id"]["ce_recovered"])
        for ce in (res, res | {"ce_zero": None}):  # as splice_eval gives it, as summary.json keeps it
            assert ce_caveat(ce, hook) == (
                "zero-ablating blocks.1.ln2.hook_scale gives no finite CE (a norm's hook_scale is divided "
                "by: 0 is no value it can take), so CE recovered is n/a; compare the dictionaries' CE and KL")
    else:
        assert math.isfinite(res["ce_zero"]) and res["ce_zero"] != res["ce_clean"]


def test_which_hooks_have_direct_logit_effects():
    """What a block adds to the residual stream (hook_attn_out, hook_mlp_out, the embedding) reaches the
    unembedding by the residual's direct path, and was refused as 'not in the residual stream'."""
    for hook in ("blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "hook_embed", "ln_final.hook_normalized",
                 "blocks.1.hook_resid_post"):
        assert not_residual(hook, 512, 512) is None
    for hook, d in (("blocks.1.attn.hook_z", 512), ("blocks.1.mlp.hook_post", 2048),
                    ("blocks.1.ln2.hook_scale", 1), ("blocks.1.ln1.hook_normalized", 512)):
        assert not_residual(hook, d, 512).startswith(f"its hook {hook} is neither in the residual stream")


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale/hook_normalized")  # u is added there
@pytest.mark.parametrize("hook", ["blocks.1.hook_attn_out", FINAL])
def test_logit_effects_of_a_blocks_output_and_of_the_final_norms(lm, lm_run, monkeypatch, hook):
    """At ln_final.hook_normalized the unembedding reads g * x + b: a direction u moves the logits by
    W_U^T (g * u) exactly (checked through the model), not centred as before the norm."""
    d = lm.d_model
    tmp_path = lm_run(str(lm.path), hook, d)
    sae = make("sae_l1", d, 6, seed=0)
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": sae})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [f"<t{i}>" for i in ids])
    run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(logit_effects=3, n_features=2, device="cpu"))
    w_u, gain, centre = unembedding(lm.bridge, hook)
    assert centre == (hook != FINAL)
    col = sae.decoder.weight.detach().T  # [k, d]
    for f in json.loads((tmp_path / "features" / "sae.json").read_text())["features"]:
        u = col[f["i"]] / col[f["i"]].norm()
        eff = ((u - u.mean() if centre else u) * gain) @ w_u  # [V]
        assert [i for i, _ in f["logits"]["up"]] == eff.topk(3).indices.tolist()
        assert [v for _, v in f["logits"]["up"]] == pytest.approx(eff.topk(3).values.tolist(), rel=1e-4)
    if hook == FINAL:
        tokens = torch.randint(0, 50000, (1, 6), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            clean = lm.bridge.run_with_hooks(tokens, return_type="logits")  # [1, 6, V]
            moved = lm.bridge.run_with_hooks(tokens, return_type="logits",
                                             fwd_hooks=[(hook, lambda act, hook=None: act + u)])
        torch.testing.assert_close(moved - clean, eff.expand_as(clean), rtol=1e-4, atol=1e-4)


KINDS = ["hook_embed", "blocks.1.attn.hook_z", "blocks.1.ln2.hook_scale", "ln_final.hook_normalized",
         "blocks.1.mlp.hook_post"]


@pytest.mark.parametrize("model", ["all-MiniLM-L6-v2", "pythia"])
def test_the_lens_reads_each_kind_of_hook_as_the_harvest_stored_it(tmp_path, lm, model):
    """One document, per_doc windows: the lens's rows at each hook are the store's, token for token and
    bit for bit (the harvest stops after the deepest of all its hooks, the lens after the one it reads:
    None, after the last block, for ln_final; 0 for hook_embed), and each kind has its width. MiniLM's
    ln_final is the LayerNorm of the masked-LM head its checkpoint lacks (random: test_encoder_tokens)."""
    from actdict.analyze.lens import text_rows
    from actdict.harvest.models import load_model

    text = "The ferry leaves at nine, rain or shine; the orchard is full of apples this year."
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": text}) + "\n")
    name = str(lm.path) if model == "pythia" else model
    kinds = KINDS if model == "pythia" else [k for k in KINDS if k != FINAL]
    common, cfg = harvest(tmp_path / "run", model=name, hooks=kinds, window_mode="per_doc", ctx=8,
                          source={"kind": "files", "path": str(tmp_path / "d.jsonl")}, store_dtype="float32")
    loaded = lm if model == "pythia" else load_model(name)
    widths = {"blocks.1.ln2.hook_scale": 1, "blocks.1.mlp.hook_post": 4 * loaded.d_model}
    assert [loaded.stop_at_layer([h]) for h in ("hook_embed", "ln_final.hook_normalized")] == [0, None]
    for hook in kinds:
        store = open_store(common.store_path, hook)
        rows = store.read_rows(0, len(store))
        ids, x = text_rows(loaded, cfg, hook, text)
        assert store.d == widths.get(hook, loaded.d_model) == x.shape[1] and len(rows) == len(x) > 15
        assert (ids == rows.token_ids).all() and (x.numpy() == rows.acts).all()


def test_a_train_hook_the_harvest_leaves_out_of_its_pattern_stops_the_dry_run(tmp_path, capsys):
    """harvest.hooks [blocks.0.attn.*] matches attn.hook_pattern, which the harvest leaves out: a train.hook
    naming it passed --dry-run, and the run stopped only once the model had expanded the pattern."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nharvest: {{hooks: ['blocks.0.attn.*'], max_tokens: 64, "
                   f"chunk_rows: 16, source: {{kind: files, path: {TEXTS}}}}}\ntrain: {{hook: "
                   "blocks.0.attn.hook_pattern, dicts: [{name: a, variant: sae_l1, k: 8}]}\n")
    assert cli(["run", str(cfg), "--dry-run"]) == 2
    assert ("train.hook='blocks.0.attn.hook_pattern' is no hook the harvest writes (it holds attention "
            "weights or scores, [batch, heads, query, key]; it is not one vector per token): actdict stores "
            "one row per token") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
