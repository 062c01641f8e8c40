"""Every kind of hook point a researcher may name, through the stages.

The models' hooks come in shapes: one vector per token ([B, ctx, d]: resid, attn_out, mlp.hook_post,
ln*.hook_scale with d=1), one per token per head ([B, ctx, heads, d_head]: attn.hook_q/k/v/z, stored as
heads*d_head), and none per token (attn.hook_pattern / hook_attn_scores [B, heads, q, k], rotary angles
[1, ctx, d], the input ids [B, ctx]). actdict stores one row per token: the others are refused before
anything is written.
"""

import pytest
from test_harvest import TEXTS, harvest

from actdict.cli import main as cli
from actdict.harvest.models import HookError
from actdict.harvest.store import list_hooks, open_store


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
    assert ("harvest: left out the hooks the patterns match that are not one vector per token: "
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
