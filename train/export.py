"""Export a trained SAE to the SAELens on-disk format: ``<out>/cfg.json`` + ``<out>/sae_weights.safetensors``.

The format (SAELens 6.x, ``SAE.save_model`` / ``SAE.load_from_disk``): tensors ``W_enc`` [d_in, d_sae],
``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in] and, for ``jumprelu``, ``threshold`` [d_sae]
(``gated``: ``b_gate``, ``r_mag``, ``b_mag`` [d_sae] instead of ``b_enc``);
cfg fields ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, ``architecture`` ("standard" | "topk" | "jumprelu" | "gated"), ``k`` and
``rescale_acts_by_decoder_norm`` for topk, and ``metadata`` (``sae_lens_version`` "6.0.0": without it
SAELens converts the cfg as a pre-6 one; ``hook_name``, ``model_name``, ...). We also write the older
(SAELens <= 5) keys ``activation_fn`` / ``activation_fn_kwargs`` / ``hook_name`` / ``model_name``, which
SAELens 6 ignores.

SAELens computes: standard  z = relu(x' @ W_enc + b_enc);  topk  z = relu(TopK_k(x' @ W_enc + b_enc));
jumprelu  z = relu(p) * (p > threshold), p = x' @ W_enc + b_enc;  gated  z = (x' W_enc + b_gate > 0) *
relu(x' (W_enc exp(r_mag)) + b_mag);  x_hat = z @ W_dec + b_dec, where x' = x - b_dec if
``apply_b_dec_to_input`` else x.

What maps (``saelens_view``): every variant with a ``to_saelens()`` method (sae_topk_auxk -> topk,
sae_batchtopk -> jumprelu with one shared threshold, sae_jumprelu -> jumprelu, sae_gated -> gated,
sae_l1_decnorm and sosae ->
standard, lse (relu) -> standard with W_dec = W, b_dec = 0, and the paper SAEs with linear encoder and
decoder: sae_l1, sae_log -> standard; sae_topk -> topk). VAE/VAEase (stochastic, gated decoder input), sae_kl
(sigmoid) and deep-encoder SAEs raise :class:`ExportError`. A model trained on normalised inputs
(``checkpoint.Normalized``: x_n = (x - m) / s) is folded into raw-space weights, so the export reads raw
activations: W_enc' = W_enc / s, W_dec' = s W_dec, and b_dec' = m + s b_dec (when b_dec is applied to the
input) or b_enc' = b_enc - (m / s) @ W_enc, b_dec' = m + s b_dec (when it is not).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from actdict.errors import ActdictError, one_line, printable
from actdict.files import write_atomic
from actdict.lock import check_writable
from actdict.train import checkpoint
from actdict.train.protocol import Dictionary

WEIGHTS, CFG = "sae_weights.safetensors", "cfg.json"
TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag")  # b_enc: not gated
SAELENS_FORMAT = "6.0.0"  # metadata.sae_lens_version (older/missing = SAELens reads the pre-6 layout)


class ExportError(ActdictError, ValueError):
    """The dictionary has no SAELens architecture (or the folder is not a checkpoint)."""


def _fold_norm(view: dict[str, Any], mean: Tensor, scale: float) -> dict[str, Any]:
    """Rewrite a view of a model on x_n = (x - mean) / scale into one on raw x (see module doc)."""
    v = dict(view)
    mean = mean.detach().float().cpu()  # [d]
    if not v["apply_b_dec_to_input"]:
        v["b_enc"] = v["b_enc"] - (mean / scale) @ v["W_enc"]
    v["W_enc"] = v["W_enc"] / scale
    v["W_dec"] = v["W_dec"] * scale
    v["b_dec"] = mean + scale * v["b_dec"]
    return v


_NEEDS = {"standard": ("b_enc",), "topk": ("b_enc",), "jumprelu": ("b_enc", "threshold"),
          "gated": ("b_gate", "r_mag", "b_mag")}  # besides W_enc, W_dec, b_dec


def check_view(view: dict[str, Any], variant: str, d: int, k: int) -> None:
    """A variant's ``to_saelens()`` view is one ``write_saelens`` can write: a known architecture, its
    tensors of shapes [d, k] (W_enc), [k, d] (W_dec), [d] (b_dec), [k] (the rest), ``apply_b_dec_to_input``,
    and topk's ``k`` (a plugin's slip is said, never written as a SAELens file of other shapes)."""
    arch, no = view.get("architecture"), "nothing exported"
    if arch not in _NEEDS:
        raise ExportError(f"{variant}: to_saelens() gave architecture {arch!r}, not one of "
                          f"{sorted(_NEEDS)}: {no}")
    shapes = {"W_enc": [d, k], "W_dec": [k, d], "b_dec": [d]} | {n: [k] for n in _NEEDS[arch]}
    for name, shape in shapes.items():
        got = view.get(name)
        if not isinstance(got, Tensor) or list(got.shape) != shape:
            said = (f"{name} of shape {list(got.shape)}" if isinstance(got, Tensor) else f"no tensor {name}")
            raise ExportError(f"{variant}: to_saelens() gave {said}, not {shape} (d {d}, k {k}): {no}")
    if not isinstance(view.get("apply_b_dec_to_input"), bool):
        raise ExportError(f"{variant}: to_saelens() gave no apply_b_dec_to_input (True or False): {no}")
    if arch == "topk" and not (isinstance(view.get("k"), int) and 0 < view["k"] <= k):
        raise ExportError(f"{variant}: to_saelens() of a topk SAE gave k {view.get('k')!r}, not 1 to {k}: "
                          f"{no}")


def saelens_view(model: Dictionary) -> dict[str, Any]:
    """-> ``architecture``, ``apply_b_dec_to_input``, tensors (raw input space) and extra cfg fields."""
    inner = model.inner if isinstance(model, checkpoint.Normalized) else model
    to = getattr(inner, "to_saelens", None)
    try:
        view = to() if to is not None else None
    except NotImplementedError as e:
        raise ExportError(f"{inner.variant}: {e}") from e
    if view is None:
        raise ExportError(f"variant {inner.variant!r} has no SAELens architecture (SAELens has standard/"
                          "topk/jumprelu/gated ReLU SAEs; VAEs and sigmoid SAEs do not map): nothing "
                          "exported")
    check_view(view, inner.variant, inner.d, inner.k)
    if isinstance(model, checkpoint.Normalized):
        view = _fold_norm(view, model.norm_mean, float(model.norm_scale))
    return view


def _metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    store, imported = cfg.get("store") or {}, cfg.get("imported") or {}  # an import records its SAE's model
    meta = {"hook_name": store.get("hook"), "model_name": store.get("model") or imported.get("model_name"),
            "actdict_variant": cfg.get("variant"), "actdict_params": cfg.get("params"),
            "actdict_store": store.get("path")}
    local = store.get("path") and "://" not in str(store["path"])  # a URL in a shared cfg.json: no request
    if local and not meta["model_name"]:  # checkpoints from before 2026-12-05 do not record it
        try:
            from actdict.harvest.store import open_store

            meta["model_name"] = open_store(store["path"], store.get("hook")).manifest.get("model")
        except (ActdictError, OSError, ValueError, KeyError):
            pass  # the store may live elsewhere: the export does not need it
    return meta


def write_saelens(view: dict[str, Any], out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``view`` (from :func:`saelens_view`) as SAELens files into ``out``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: view[k].contiguous() for k in TENSORS if k in view}  # W_enc [d, k] ... threshold [k]
    d_in, d_sae = tensors["W_enc"].shape
    arch = view["architecture"]
    meta = {"sae_lens_version": SAELENS_FORMAT, "sae_lens_training_version": None} | dict(meta or {})
    cfg: dict[str, Any] = {"d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32", "device": "cpu",
                           "apply_b_dec_to_input": bool(view["apply_b_dec_to_input"]),
                           "normalize_activations": "none", "reshape_activations": "none",
                           "architecture": arch, "metadata": meta,
                           "activation_fn": "topk" if arch == "topk" else "relu",
                           "activation_fn_kwargs": {"k": view["k"]} if arch == "topk" else {},
                           "hook_name": meta.get("hook_name") or "",
                           "model_name": meta.get("model_name") or ""}
    if arch == "topk":
        cfg |= {"k": int(view["k"]), "rescale_acts_by_decoder_norm": False}
    checkpoint.write_safetensors(tensors, out / WEIGHTS)
    write_atomic(out / CFG, json.dumps(cfg, indent=1, default=str))
    return out


def _checkpoints_near(path: Path) -> str:
    """What to pass instead of ``path``: the trained dictionaries in ``path/dicts`` (a run folder was given)
    or beside ``path`` (a misspelt name), as a hint for the error message; "" when there are none."""
    for root in (path / "dicts", path, path.parent):
        found = sorted(p.name for p in root.glob("*") if (p / CFG).is_file()) if root.is_dir() else []
        if found:
            return f"; the trained dictionaries in {root}: {found} (pass {root}/NAME)"
    return ""


def check_out(dict_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse an output folder that would damage a run (a checkpoint's folder, a run's dicts/, where
    analysis takes every folder for a dictionary) or lose files (a non-empty folder, unless ``overwrite``
    and it holds an export)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder: pass a new or empty folder for the export")
    if (out / checkpoint.WEIGHTS).exists() or out.resolve() == dict_dir.resolve():
        raise ExportError(f"{out} holds an actdict checkpoint ({checkpoint.WEIGHTS}): an export there would "
                          "replace its cfg.json; pass another folder")
    parent = out.resolve().parent
    if parent.name == "dicts" and any((p / checkpoint.WEIGHTS).is_file() for p in parent.iterdir()):
        raise ExportError(f"{out} is in a run's dicts folder, where analysis takes every folder for a "
                          "trained dictionary; pass a folder outside it")
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    export = set(held) <= {CFG, WEIGHTS}  # (hidden files: a killed export's temporaries)
    if held and not (overwrite and export):
        raise ExportError(f"{out} holds " + ("an export already; pass another folder, or --overwrite to "
                                             "replace it" if export else f"other files: {held[:5]}; pass "
                                             "another folder"))


def export_saelens(dict_dir: str | Path, out: str | Path, overwrite: bool = False,
                   model_name: str | None = None) -> Path:
    """Export the checkpoint in ``dict_dir`` (``<run_dir>/dicts/<name>``) to SAELens files in ``out``
    (a new or empty folder, or one holding an export when ``overwrite``: ``check_out``); ``model_name``
    replaces the store's model in the cfg (a local copy's folder, which SAELens cannot load by name)."""
    try:
        model, cfg = checkpoint.load(dict_dir)
    except checkpoint.CheckpointError as e:
        raise ExportError(f"{e}{_checkpoints_near(Path(dict_dir))}") from e
    check_out(Path(dict_dir), Path(out), overwrite)
    view = saelens_view(model)  # ExportError for a variant SAELens has no architecture for
    check_writable([out], "the SAELens files", elsewhere="pass another folder")  # one line, not a traceback
    meta = _metadata(cfg)
    return write_saelens(view, out, meta | ({"model_name": model_name} if model_name else {}))


def local_model(name: str | None) -> bool:
    """Whether a store's model is a local folder (harvest.model=/path/to/copy), not a hub name: SAELens and
    TransformerLens load the model of an SAE by its hub name (``HookedSAETransformer.from_pretrained``)."""
    return bool(name) and (Path(name).is_absolute() or Path(name).is_dir())


def main(argv: list[str] | None = None) -> int:
    """``python -m actdict.train.export RUN_DIR/dicts/NAME OUT`` (also ``actdict export``)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="actdict export", description="export a trained SAE to SAELens files")
    p.add_argument("dict_dir", help="a trained dictionary: RUN_DIR/dicts/NAME")
    p.add_argument("out", help="output folder (cfg.json + sae_weights.safetensors): new or empty")
    p.add_argument("--overwrite", action="store_true", help="replace the export OUT holds")
    p.add_argument("--model-name", metavar="NAME", help="the model's name in the SAELens cfg (default: the "
                   "store's model; a harvest of a local copy records its folder): its hub name, e.g. "
                   "EleutherAI/pythia-70m-deduped")
    args = p.parse_args(argv)
    try:
        path = export_saelens(args.dict_dir, args.out, overwrite=args.overwrite, model_name=args.model_name)
        warning = json.loads((Path(args.dict_dir) / checkpoint.CFG).read_text()).get("warning")
    except ActdictError as e:
        print(printable(f"actdict: {type(e).__name__}: {e}"), file=sys.stderr)
        return 2
    if warning:  # recorded when it was saved (train.member.Member.diverged)
        print(one_line(f"actdict export: warning: its training warned: {warning}"), file=sys.stderr)
    print(one_line(f"exported {args.dict_dir} -> {path} (SAE.load_from_disk({str(path)!r}) in sae_lens)"))
    named = json.loads((path / CFG).read_text()).get("model_name")
    if not args.model_name and local_model(named):
        print(f"actdict export: note: its model_name is the local folder {named!r} the store was harvested "
              "from; SAELens loads an SAE's model by its hub name: add --model-name NAME (e.g. "
              "EleutherAI/pythia-70m-deduped) to write that instead", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
