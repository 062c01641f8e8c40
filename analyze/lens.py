"""``actdict lens CONFIG TEXT``: which features of the trained dictionaries fire on each token of a text.

The text takes the harvest's own path (the config's model, tokenizer, ``ctx``, forward ``dtype`` and special
tokens; per-document windows, so the text is read on its own), and the rows the harvest would store for it
are encoded by each dictionary of ``<run_dir>/dicts``. A token's features are its active latents, the same
ones AD counts (SAEs: its nonzero codes, the ones L0 counts, when at least one code is exactly zero; VAE /
VAEase: the per-sample Otsu split of the posterior log variance), listed by |code|. Where ``actdict
analyze`` has written ``<run_dir>/features/<name>.json``, each feature is labelled with the tokens it fires
on most in the corpus (its top contexts). ``--feature I`` follows chosen features of one dictionary
instead: each one's code on every token, and where it is active.

With ``harvest.mode: embeddings`` the text is embedded as the harvest embedded its documents (the same
sentence-transformers model, prompt and truncation; one row for the text, or one per paragraph with
``embed.unit: paragraph``) and each such unit lists its active features, labelled with the first words of
the corpus texts they fire on most.

Shapes: n = the text's stored tokens (or units), d = the hook's width, k = latents, t = ``top``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from actdict.analyze.metrics import active_mask
from actdict.analyze.outputs import OutputError, read_output
from actdict.analyze.texts import clip
from actdict.analyze.toptokens import alone, token_label
from actdict.config import Common, common_of, load_experiment, section
from actdict.errors import ActdictError, print_error, printable
from actdict.files import write_atomic
from actdict.precision import forward_dtype


class LensError(ActdictError, ValueError):
    """The lens cannot run on this text, store or run (the message says what to change)."""


def text_rows(lm, cfg, hook: str, text: str) -> tuple[np.ndarray, Tensor]:
    """(token ids [n], activations [n, d] float32) of the rows a harvest with ``cfg`` stores for ``text``
    read alone (``per_doc`` windows of ``cfg.ctx``; special tokens dropped as ``cfg.skip_special`` says).
    The harvest's check of the hook comes first (``LoadedModel.row_problems``: ``untrained_hooks`` too),
    so that a model or hook the bridge fails on is said as the harvest says it, not as the bridge's
    traceback, and a hook of a head the checkpoint lacks (drawn at random at each load: a store harvested
    from it before the harvest refused such hooks) is refused, not read through another random head."""
    from actdict.harvest.models import rows_refused
    from actdict.harvest.plan import stored_positions
    from actdict.harvest.rows import forward
    from actdict.harvest.windows import past_vocab, token_windows, tokenized, window_specials

    ids = next(tokenized(lm.tokenizer, [text]))
    if said := past_vocab(np.asarray(ids), lm):  # as the harvest refuses it (else an IndexError)
        raise LensError(f"the text holds {said}: leave that text out")
    windows = list(token_windows([ids], cfg.ctx, mode="per_doc", **window_specials(lm, cfg)))
    if problems := lm.row_problems([hook]):  # ModelError when no forward runs; HookError for the hook
        raise rows_refused(problems, lm.name)  # (a random head's too: other rows than the store's each load)
    stop = lm.stop_at_layer([hook])
    tokens, rows = [], []
    for s in range(0, len(windows), cfg.batch_size):
        batch = windows[s : s + cfg.batch_size]
        acts = forward(lm, batch, [hook], stop)[hook]  # [B, ctx, d]
        for b, w in enumerate(batch):
            p = stored_positions(w, lm.special_ids, cfg.skip_special)  # [m] window positions
            tokens.append(w.tokens[p])
            rows.append(acts[b, torch.from_numpy(p)].float())  # [m, d]
    if not rows or sum(len(t) for t in tokens) == 0:
        raise LensError(f"the text {text[:40]!r} has no tokens to read")
    return np.concatenate(tokens), torch.cat(rows)


def harvest_dtype(numerics: str | None, asked: str, device: str) -> str:
    """The forward dtype the store's harvest ran in, from its manifest's ``numerics`` ('forward bfloat16 on
    cpu, stored float16', 'encode float32 on cuda, ...'), so that the lens' rows are made as the store's
    were (``harvest.dtype: auto`` may pick another dtype on this machine); else ``asked`` resolved here."""
    m = re.match(r"(?:forward|encode) (float32|bfloat16|float16) on ", numerics or "")
    return m.group(1) if m else forward_dtype(asked, device)


def unit_rows(cfg, text: str, numerics: str | None = None) -> tuple[str, list[str], Tensor]:
    """(model name, the units [n], their embeddings [n, d] float32) a ``harvest.mode: embeddings`` harvest
    with ``cfg`` stores for ``text`` read as one document: the whole text, or each of its paragraphs
    (``embed.unit``), through the same sentence-transformers model, prompt and truncation."""
    from actdict.harvest.embed import applied_prompt, embed_texts, load_encoder, text_units
    from actdict.harvest.models import resolve_device

    units = [u for _, _, u in text_units([text], cfg.embed.unit)]
    if not units or not text.strip():
        raise LensError(f"the text {text[:40]!r} has no {cfg.embed.unit} to embed")
    device = resolve_device(cfg.device)
    enc = load_encoder(cfg.model, device=device, dtype=harvest_dtype(numerics, cfg.dtype, device),
                       max_seq_length=cfg.embed.max_seq_length)
    prompt = applied_prompt(enc.model, cfg.embed)[0]
    return enc.name, units, torch.from_numpy(embed_texts(enc, units, prompt, cfg.embed, cfg.batch_size))


def deterministic(model, x: Tensor) -> tuple[Tensor, Tensor]:
    """x [n, d] -> (codes [n, k], active [n, k] bool): the deterministic forward's codes and the active
    split of AD, the one forward that the features listed and those followed are read from."""
    with torch.no_grad():
        out = model(x, sample=False)
    return out.codes, active_mask(out.activity, model.active_side)


def ranked(all_codes: Tensor, active: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """(codes [n, k], active [n, k]) -> (features [n, t] int64, codes [n, t], active count [n]): each row's
    active latents by |code|, largest first (t = min(top, k)); rows with fewer than t active latents are
    padded with -1 / 0."""
    mag = all_codes.abs().masked_fill(~active, -1.0)  # [n, k]; inactive latents sort last
    val, idx = mag.topk(min(top, mag.shape[1]), dim=1)  # [n, t]
    ok = val >= 0
    codes = all_codes.gather(1, idx).masked_fill(~ok, 0.0)  # [n, t]
    return idx.masked_fill(~ok, -1), codes, active.sum(1)


def token_features(model, x: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """x [n, d] -> ``ranked`` of ``model``'s deterministic forward."""
    return ranked(*deterministic(model, x), top)


def _tokens_of(hits: list, strings: dict, n: int, texts: dict | None = None) -> list[str]:
    """The first ``n`` distinct tokens of a features file's hits (strongest first); for an embeddings store
    (``texts``: row -> text), the first words of the hits' texts."""
    seen: list[str] = []
    for hit in hits:
        ids, c = hit[4], hit[5]
        if texts and str(hit[1]) in texts:
            s = clip(texts[str(hit[1])], 32)
        else:
            s = token_label(strings.get(str(ids[c]), f"#{ids[c]}"))
        if s and s not in seen:  # an embedded row without its text has no token string: no label
            seen.append(s)
        if len(seen) == n:
            break
    return seen


Labels = dict[int, tuple[list[str], list[str]]]


def labels_of(data: dict, n: int, path: Path) -> Labels:
    """The labels of the features file ``data`` (read from ``path``); OutputError when its records are not
    a features file's (an edit, another program's JSON: an IndexError or KeyError traceback otherwise)."""
    strings, texts = data.get("tokens", {}), data.get("texts")
    try:
        return {int(f["i"]): (_tokens_of(f.get("top", []), strings, n, texts),
                              _tokens_of(f.get("bottom", []), strings, n, texts))
                for f in data.get("features", [])}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise OutputError(f"{path} is corrupt (its features are not analyze's records: {type(e).__name__}: "
                          f"{e}): rerun `actdict analyze` to rewrite it") from e


def feature_labels(path: Path, n: int = 3) -> Labels:
    """feature -> (the ``n`` distinct tokens of its largest codes in the corpus, those of its most negative
    codes), from an analyze features file (``analyze.features``); {} when analyze has not written it
    (OutputError when it is damaged)."""
    return labels_of(read_output(path), n, path) if path.is_file() else {}


def dict_labels(run_dir: Path, name: str, k: int, n: int = 3) -> tuple[Labels, str]:
    """(labels of dictionary ``name`` as :func:`feature_labels` reads them, "") or ({}, why there are none):
    see :func:`dict_features`."""
    data, why = dict_features(run_dir, name, k)
    return (labels_of(data, n, run_dir / "features" / f"{name}.json"), "") if data is not None else ({}, why)


def dict_features(run_dir: Path, name: str, k: int) -> tuple[dict | None, str]:
    """(dictionary ``name``'s features file, read once, "") or (None, why it is not this training's): no
    features file yet, or one computed from another training of ``name`` (its ``config_hash`` or ``k``
    differs from the checkpoint's), whose labels would name other features, or one of an older analysis that
    recorded no ``config_hash`` beside a checkpoint that records one (it cannot tell which training it is)."""
    from actdict.analyze.inputs import trained_records

    path = run_dir / "features" / f"{name}.json"
    if not path.is_file():
        return None, f"no corpus labels: {path} not found (run actdict analyze)"
    data = read_output(path)
    have, want = data.get("config_hash"), trained_records(run_dir, [name]).get(name, {}).get("config_hash")
    if data.get("k") != k or (have and want and have != want):
        return None, (f"no corpus labels: {path} was computed from another training of {name} "
                      f"(k {data.get('k')}, config_hash {have}; the checkpoint: k {k}, {want}): rerun "
                      "actdict analyze")
    if want and not have:  # written before features files recorded it: this training's or an earlier one's
        return None, (f"no corpus labels: {path} was written by an older actdict, which did not record "
                      f"which training of {name} it describes (the checkpoint may have been retrained "
                      "since): rerun actdict analyze")
    return data, ""


def _label(labels: dict, f: int, code: float) -> list[str]:
    """The corpus tokens of feature ``f`` on the side of ``code`` (negative codes: its bottom contexts)."""
    top, bottom = labels.get(f, ([], []))
    return bottom if code < 0 else top


_NO_MODEL = ("the store holds vectors brought from elsewhere, and there is no model to read a text with; "
             "embed the text as you made the vectors and encode it with the dictionary "
             "(docs/architecture.md, 'Using a trained dictionary')")


def lens_store(common: Common, records: dict[str, dict]) -> tuple[str, str | None]:
    """The store the lens reads, and a note when it is not the config's: ``store`` when set, else
    ``<run_dir>/store`` when it is there, else the one store the dictionaries' cfg.json (``records``) record
    that they learned (``--set run_dir=runs/other``, a run folder whose training read a store elsewhere;
    where a relative one or a URL lies: ``storepath.learned_store``); LensError when none of them is there.
    Without records (no dictionaries) the config's, as before: the dictionaries' error is said first."""
    path = common.store_path
    if common.store or not records or Path(path).exists():
        return path, None
    from actdict.analyze.storepath import learned_store

    learned = sorted({p for r in records.values() if (p := (r.get("store") or {}).get("path"))})
    found, why = learned_store(learned[0], Path(common.run_dir), records) if len(learned) == 1 else (None, "")
    if found:
        at = "" if found == learned[0] else (f": their cfg.json records {learned[0]}, relative to the folder "
                                             "their training ran in: the run folder or one above it")
        return found, (f"{path} holds no store: reading {found}, the store the dictionaries of "
                       f"{common.run_dir} learned (their cfg.json){at}; --set store=PATH reads another")
    said = (f"they learned {learned[0]}, {why}" if len(learned) == 1 else
            "their cfg.json names no store" if not learned else f"they learned {len(learned)} stores")
    raise LensError(f"no store at {path} for the dictionaries of {common.run_dir} ({said}): give the store "
                    "they learned with --set store=PATH")


def lens(common: Common, cfg, text: str, names: list[str], top: int = 5, hook: str | None = None,
         follow: list[int] | None = None) -> dict:
    """The lens of ``text`` for the dictionaries ``names`` (all in ``<run_dir>/dicts`` when empty), as a
    JSON-ready dict: hook, tokens, and per dictionary and token the active count and top features; with
    ``follow`` (feature indices of the one dictionary), also each one's code and active flag on every token
    (``followed``)."""
    from actdict.analyze.inputs import (
        load_models,
        open_trained_store,
        other_model,
        skipped_notes,
        trained_hook,
        trained_records,
    )
    from actdict.analyze.storepath import unlearned
    from actdict.harvest.models import load_model, resolve_device
    from actdict.harvest.tokentext import token_texts

    if cfg.mode == "vectors":
        raise LensError(f"harvest.mode is 'vectors': {_NO_MODEL}")
    if top < 1:
        raise LensError(f"--top must be >= 1, got {top}")
    run_dir = Path(common.run_dir)
    for note in skipped_notes(run_dir, names):  # on stderr: stdout is the lens
        print(printable(f"actdict lens: note: {note}"), file=sys.stderr)
    records = trained_records(run_dir, names)
    trained = trained_hook(records)
    if hook and trained and hook != trained:
        raise LensError(f"--hook {hook}: the dictionaries were trained on {trained}")
    read = hook or trained or (cfg.embed.hook if cfg.mode == "embeddings" else None)
    path, note = lens_store(common, records)
    if note:
        print(printable(f"actdict lens: note: {note}"), file=sys.stderr)
    store = open_trained_store(path, read, run_dir, names, records)
    if store.manifest.get("kind") == "vectors" or store.manifest.get("model") is None:  # before a model loads
        raise LensError(f"the store at {path} holds vectors of no model: {_NO_MODEL}")
    if wrong := unlearned(store, records):  # another model's store of their hook and d: silently read
        raise LensError(f"the store at {path} is not the one {sorted(wrong)} learned (" + "; ".join(
            f"{n}: {', '.join(c)}" for n, c in sorted(wrong.items())) + "): give the store they learned "
            "with --set store=PATH")
    for note in other_model(records, store.manifest.get("model")):  # an imported SAE of another model
        print(printable(f"actdict lens: note: {note}"), file=sys.stderr)
    models = load_models(run_dir, names, store.d,
                         select=lambda ns: " ".join(f"--dict {n}" for n in ns))
    if follow:
        check_follow(follow, models)

    def same_model(model_name: str) -> None:  # else the dictionaries would read another model's activations
        if store.manifest.get("model") != model_name:
            raise LensError(f"the store at {path} was harvested from "
                            f"{store.manifest.get('model')!r}, the config names {model_name!r}")

    if cfg.mode == "embeddings":  # one row per document or paragraph: the units stand for the tokens
        model_name, strings, x = unit_rows(cfg, text, store.manifest.get("numerics"))  # [n], [n, d]
        same_model(model_name)
        ids, unit = np.full(len(strings), -1), cfg.embed.unit
    else:
        device = resolve_device(cfg.device)  # the dtype the store's harvest ran in (harvest_dtype)
        lm = load_model(cfg.model, device=device,
                        dtype=harvest_dtype(store.manifest.get("numerics"), cfg.dtype, device))
        model_name, unit = lm.name, "token"
        same_model(model_name)
        ids, x = text_rows(lm, cfg, store.hook, text)  # [n], [n, d]
        shown = token_texts(lm.tokenizer)  # as the report and the features files show tokens
        strings = [shown(int(i)) for i in ids]
    out = {"text": text, "hook": store.hook, "model": model_name, "unit": unit, "token_ids": ids.tolist(),
           "tokens": strings, "dicts": {}}
    for name, model in models.items():
        all_codes, active = deterministic(model.eval(), x)  # [n, k] x2: one forward for both
        feats, codes, n_active = ranked(all_codes, active, top)
        labels, note = dict_labels(run_dir, name, model.k)
        out["dicts"][name] = {
            "variant": model.variant, "k": model.k, "labels_note": note,
            "active": n_active.tolist(),
            "features": [[{"i": f, "code": round(c, 4), "top_tokens": _label(labels, f, c)}
                          for f, c in zip(fr.tolist(), cr.tolist(), strict=True) if f >= 0]
                         for fr, cr in zip(feats, codes, strict=True)]}
        if follow:
            out["dicts"][name]["followed"] = followed(all_codes, active, follow, labels)
    return out


def check_follow(follow: list[int], models: dict) -> None:
    """``--feature`` indices name features of one dictionary: refused with several or out of range."""
    if len(models) != 1:
        raise LensError(f"--feature follows features of one dictionary; {len(models)} are read "
                        f"({', '.join(models)}): name one with --dict")
    k = next(iter(models.values())).k
    if bad := [f for f in follow if not 0 <= f < k]:
        raise LensError(f"--feature {bad[0]}: the dictionary has features 0..{k - 1}")


def followed(codes: Tensor, active: Tensor, follow: list[int], labels: Labels) -> list[dict]:
    """Per followed feature: its code on every row (``deterministic``'s codes [n, k]), whether it is active
    there (active [n, k]), its corpus labels: [{"i", "codes" [n], "active" [n], "top_tokens"}]."""
    return [{"i": f, "codes": [round(c, 4) for c in codes[:, f].tolist()], "active": active[:, f].tolist(),
             "top_tokens": _label(labels, f, side(codes[:, f], active[:, f]))} for f in follow]


def side(codes: Tensor, active: Tensor) -> float:
    """The sign of a followed feature's largest active |code| in the text ([n] codes, [n] active), whose
    corpus side labels it (a VAE's signed codes: its bottom contexts when that code is negative); 1 when it
    is active nowhere."""
    mag = codes.abs().masked_fill(~active, -1.0)  # [n]
    return float(codes[mag.argmax()]) if len(codes) and bool(active.any()) else 1.0


def format_lens(res: dict) -> str:
    """The lens as text: per dictionary, one line per token (token, active count, features)."""
    unit = res.get("unit", "token")
    if unit == "token":
        shown = [repr(alone(s)) for s in res["tokens"]]  # as the report shows them: '##en' a continuation
        what = "tokens in the corpus"
    else:
        shown = [repr(clip(s, 40)) for s in res["tokens"]]
        what = "texts in the corpus, their first words"
    width = min(18 if unit == "token" else 44, max(len(s) for s in shown))
    lines = [f"{res['model']} {res['hook']}: {len(shown)} {unit}{'' if len(shown) == 1 else 's'}"]
    for name, r in res["dicts"].items():
        cols = f"{unit}, active latents, top features (#latent code [its top {what}])"
        if r.get("followed"):
            cols = f"{unit}, each followed feature's code (* active; bar: share of the largest active code)"
        lines.append(f"\n{name} ({r['variant']}, k {r['k']}): {cols}")
        if r.get("labels_note"):
            lines.append(f"  ({r['labels_note']})")
        if r.get("followed"):
            lines += _follow_lines(shown, width, r["followed"])
            continue
        for s, n, feats in zip(shown, r["active"], r["features"], strict=True):
            fs = "  ".join(f"#{f['i']} {f['code']:.3g}" + (f" [{', '.join(f['top_tokens'])}]"
                                                          if f["top_tokens"] else "") for f in feats)
            lines.append(f"  {s:<{width}} {n:>4}  {fs}")
    return printable("\n".join(lines))  # corpus tokens, a store's hook and model: no terminal control codes


def _follow_lines(shown: list[str], width: int, follow: list[dict]) -> list[str]:
    """One column per followed feature: its code on each token, * where active, and on active tokens a bar
    of the code's share of the largest active |code| in the text."""
    lines = ["  followed: " + "; ".join(f"#{f['i']} [{', '.join(f['top_tokens'])}]" for f in follow)]
    lines.append((f"  {'':<{width}} " + " ".join(f"{'#' + str(f['i']):>8}{'':10}" for f in follow)).rstrip())
    most = [max((abs(c) for c, a in zip(f["codes"], f["active"], strict=True) if a), default=0.0) or 1.0
            for f in follow]
    def cell(f: dict, t: int, m: float) -> str:
        bar = f"*{'#' * round(8 * abs(f['codes'][t]) / m):<9}" if f["active"][t] else " " * 10
        return f"{f['codes'][t]:>8.3g}{bar}"

    for t, s in enumerate(shown):
        cells = [cell(f, t, m) for f, m in zip(follow, most, strict=True)]
        lines.append(f"  {s:<{width}} " + " ".join(cells).rstrip())
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="actdict lens", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("config", help="the experiment YAML whose store and dictionaries to read")
    ap.add_argument("text", nargs="?", help="the text (or use --file)")
    ap.add_argument("--file", type=Path, help="read the text from this file ('-': standard input)")
    ap.add_argument("--dict", action="append", default=[], dest="dicts", metavar="NAME",
                    help="only this dictionary (repeatable); default every one in <run_dir>/dicts")
    ap.add_argument("--top", type=int, default=5, help="features shown per token (default 5)")
    ap.add_argument("--hook", help="the store's hook (default: the one the dictionaries were trained on)")
    ap.add_argument("--feature", action="append", type=int, default=[], metavar="I", dest="follow",
                    help="follow feature I of the dictionary (--dict, when the run has several) over the "
                         "text: its code on every token (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="a dotted override of the config, as the stages take them (repeatable), e.g. "
                         "--set run_dir=runs/other")
    a, extra = ap.parse_known_intermixed_args(argv)  # options before or after the text
    if overrides := [s for s in [a.text, *extra] if s is not None and re.match(r"[A-Za-z_][\w.]*=", s)]:
        ap.error(f"{' '.join(overrides)}: overrides go after --set here: --set {overrides[0]} (a text that "
                 "looks like one: --file)")
    if extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if (a.text is None) == (a.file is None):
        ap.error("give the text or --file (one of the two)")
    if a.json and not (a.json.parent.is_dir() and not a.json.is_dir()):  # said before the model loads
        ap.error(f"--json {a.json}: not a file in an existing folder")
    try:
        text = a.text if a.file is None else (sys.stdin.read() if str(a.file) == "-" else
                                              a.file.read_text(encoding="utf-8", errors="replace"))
    except OSError as e:
        ap.error(f"--file {a.file}: {e.strerror or e}")
    try:
        data = load_experiment(a.config, a.overrides)
        from actdict.analyze.config import AnalyzeConfig
        from actdict.harvest.config import HarvestConfig
        from actdict.train.config import TrainConfig

        for name, cls in (("train", TrainConfig), ("analyze", AnalyzeConfig)):
            section(data, name, cls)  # unread here, but checked as the stages check them: a typo is refused
        res = lens(common_of(data), section(data, "harvest", HarvestConfig), text, a.dicts, a.top, a.hook,
                   list(dict.fromkeys(a.follow)))  # a feature named twice: one column
        if a.json:  # before the text: a reader closing stdout early (| head) must not lose it
            write_atomic(a.json, json.dumps(res, indent=1, ensure_ascii=False) + "\n")  # full disk: one line
    except ActdictError as e:  # ConfigError included
        return print_error("actdict lens", e)
    print(format_lens(res))
    return 0
