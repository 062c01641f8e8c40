"""The store's language model in the ``analyze`` stage (``analyze.run``), set up before the pass so that what
stops it stops it first: loaded once (``causal_lm``) for CE recovered (``splice_setup``, ``splice_models``:
``analyze.splice``) and for each feature's direct logit effects (``add_logit_effects``, ``named``:
``analyze.logits``).
"""

from __future__ import annotations

import torch

from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.inputs import AnalyzeError
from actdict.analyze.splice import heldout_windows, splice_eval, splice_fails


def causal_lm(store, device: torch.device, cfg: AnalyzeConfig):
    """The store's causal language model (float32, offline), for ``ce_loss`` and ``logit_effects``, loaded
    before the analysis pass so that what stops it stops it first: not an encoder, nor a model whose
    unembedding TransformerBridge drew at random (``harvest.bridge.untrained_hooks``: a checkpoint saved
    without its lm_head), whose logits would be of random weights."""
    from actdict.analyze.logits import no_direct_path, not_residual
    from actdict.harvest.bridge import untrained_hooks
    from actdict.harvest.models import load_model, resolve_model

    asks = " and ".join(f"analyze.{k}" for k in ("ce_loss", "logit_effects") if getattr(cfg, k))
    off = " and ".join(f"analyze.{k}={v}" for k, v in (("ce_loss", "false"), ("logit_effects", 0))
                       if getattr(cfg, k))
    man = store.manifest
    if not man.get("model") or not man.get("hook"):
        raise AnalyzeError(f"{asks} needs a store harvested from a language model (its manifest has no "
                           f"model/hook): set {off}")
    if man.get("kind") == "embeddings":  # whatever the model, a pooled embedding is no activation of it
        raise AnalyzeError(f"{asks} needs a model's activations at a hook; this store's rows are pooled "
                           f"sentence embeddings of {man['model']}: set {off}")
    lm = load_model(man["model"], device=str(device), dtype="float32")
    if lm.kind != "causal":
        raise AnalyzeError(f"{asks} needs a causal language model; {lm.name} is an encoder: set {off}")
    if why := untrained_hooks(lm.bridge, resolve_model(lm.name)[2]).get("unembed.hook_out"):
        raise AnalyzeError(f"{asks} needs the model's logits, and {lm.name}'s unembedding is not its own "
                           f"(unembed.hook_out: {why}): set {off}")  # a bare GPTNeoXModel's checkpoint
    if cfg.logit_effects and (why := not_residual(man["hook"], store.d, lm.d_model)
                              or no_direct_path(lm.bridge, lm.d_model)):
        raise AnalyzeError(f"analyze.logit_effects: {why}: set analyze.logit_effects=0")
    return lm


def splice_setup(lm, cfg: AnalyzeConfig, store, test_chunks: list[int]):
    """The store's causal language model ``lm`` and its held-out windows for the CE/KL evaluation (see
    ``analyze.splice``), made before the analysis pass: (model, windows). The windows begin and join
    documents as the store's harvest did (its manifest's settings); a window longer than the model's context
    is refused, and so is a hook the bridge cannot edit (``splice_fails``: OLMo 1's norms), before the pass:
    a refusal there loses nothing, where the splice's own failure came after the whole pass, and a CE left
    out with a note would be missed in a sweep that asked for it."""
    from dataclasses import replace

    from actdict.harvest.bridge import tl_version
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.windows import window_specials

    man = store.manifest
    made = man.get("harvest") or {}  # stores of format 1 record no harvest config: the defaults then
    how = replace(HarvestConfig(), **{k: made[k] for k in ("prepend_bos", "join_with_eos", "pad_id",
                                                            "window_mode") if k in made})
    spec = window_specials(lm, how)
    if (n := cfg.ce_ctx + len(spec["prefix"])) > lm.n_ctx:  # rotary models read on, past what they learned
        bos = f" (+ {len(spec['prefix'])} BOS: windows of {n} tokens)" if len(spec["prefix"]) else ""
        raise AnalyzeError(f"analyze.ce_ctx={cfg.ce_ctx}{bos} exceeds the context of {lm.name} ({lm.n_ctx} "
                           f"tokens): set analyze.ce_ctx={lm.n_ctx - len(spec['prefix'])} or less")
    windows = heldout_windows(store, test_chunks, cfg.ce_windows, cfg.ce_ctx, spec["prefix"], spec["sep"],
                              join_docs=how.window_mode == "concat", pad_id=spec["pad_id"])
    if why := splice_fails(lm.bridge, windows, man["hook"]):  # before the pass: nothing is lost
        raise AnalyzeError(f"analyze.ce_loss: TransformerLens {tl_version()}'s TransformerBridge cannot "
                           f"run a forward of {lm.name} that edits its hook {man['hook']} ({why}), so no "
                           "dictionary can be spliced there: set analyze.ce_loss=false (the rest of the "
                           "analysis runs as it would; reading the hook, as the harvest and the logit "
                           "effects do, works)")
    return lm, windows


def splice_models(lm, windows, hook: str, cfg: AnalyzeConfig, models: dict) -> dict:
    """CE/KL of every dictionary spliced into the store's language model (``splice_setup``)."""
    res = splice_eval(lm.bridge, windows, hook, models, cfg.ce_batch_size, progress=True)
    return res | {"windows": len(windows), "ctx": cfg.ce_ctx}


def add_logit_effects(datas: dict[str, dict], dirs: dict, lm, n: int, decode, hook: str | None = None
                      ) -> None:
    """Each feature's direct logit effects (``analyze.logits``: the n tokens it raises and lowers most) into
    its record of ``datas`` (``logits``), their strings into the features file's ``tokens``; ``hook``: the
    store's (after the final norm, directions are not centred)."""
    from actdict.analyze.logits import logit_effects, records, unembedding

    w_u, g, centre = unembedding(lm.bridge, hook)
    for name, (unit, _) in dirs.items():
        feats, tokens = datas[name]["features"], datas[name]["tokens"]
        for f, rec in enumerate(records(*logit_effects(unit, w_u, g, centre, n))):
            if rec is not None:
                feats[f]["logits"] = rec
        ids = sorted({i for f in feats for side in (f.get("logits") or {}).values() for i, _ in side} -
                     {int(t) for t in tokens})
        tokens.update({str(i): s for i, s in zip(ids, decode(ids) if ids else [], strict=True)})


def named(logits: dict, tokens: dict[str, str]) -> dict:
    """A feature's ``logits`` record with each token id replaced by its string (summary.json's form)."""
    return {side: [[tokens.get(str(i), f"#{i}"), v] for i, v in pairs] for side, pairs in logits.items()}
