"""Import an SAE saved in SAELens' on-disk format (``cfg.json`` + ``sae_weights.safetensors``: what
``SAE.save_model`` writes, what a pretrained release holds, what ``actdict export`` writes) as a checkpoint
of a run folder, ``<run_dir>/dicts/<name>/``, so that ``actdict analyze``, its report and ``actdict lens``
read it beside the run's own dictionaries, on the same held-out rows.

What maps, and how (the inverse of ``actdict.train.export``; SAELens' formulas are in its docstring):

- ``standard``: z = relu(x' W_enc + b_enc) -> ``sae_l1`` (linear encoder and decoder);
- ``topk``: the ``k`` largest of x' W_enc + b_enc, through a ReLU -> ``sae_topk`` with ``topk = k`` (SAELens
  <= 5 saved it as ``standard`` with the activation function ``topk``);
- ``jumprelu``: z = relu(p) (p > threshold) -> ``sae_jumprelu`` with log_threshold = log(threshold) (a
  threshold <= 0 is log 0 = -inf: z = relu(p), as SAELens computes it then);
- ``gated``: z = (x' W_enc + b_gate > 0) relu(x' W_enc exp(r_mag) + b_mag) -> ``sae_gated`` (the same
  tensors, b_gate as its ``b_enc``; it always subtracts b_dec, so a cfg with ``apply_b_dec_to_input`` false
  has b_dec W_enc added to b_gate, and b_dec W_enc exp(r_mag) to b_mag);
- SAELens <= 5's ``finetuning_scaling_factor`` (decode: (z * scale) W_dec) is folded into the decoder rows.

where x' = x - b_dec when ``apply_b_dec_to_input`` (SAELens' default when the cfg does not say), which is
folded into the encoder bias (b_enc - b_dec W_enc; ``gated``: above), so the imported model computes the
same codes and reconstructions from raw rows. Tensors of any float dtype are read as float32. Refused, with
the reason: another architecture (transcoders, ...) or activation function (tanh-relu),
``normalize_activations`` other than none (its scale is computed from data at run time, not saved), topk's
``rescale_acts_by_decoder_norm``, tensors whose shapes do not match ``d_in`` / ``d_sae``. The variant's
training params (``lam1``, ...) are its defaults: they describe no training of this SAE; cfg.json's
``imported`` records where it came from and how it was read, and ``store.hook`` the hook its cfg names,
which analysis checks against the store's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from actdict.errors import ActdictError, one_line, printable
from actdict.files import check_not_linked
from actdict.lock import check_writable, folder_lock
from actdict.names import is_hook_name
from actdict.train import checkpoint
from actdict.train.config import bad_name
from actdict.train.protocol import Dictionary, make

WEIGHTS, CFG = "sae_weights.safetensors", "cfg.json"
VARIANTS = {"standard": "sae_l1", "topk": "sae_topk", "jumprelu": "sae_jumprelu", "gated": "sae_gated"}
GATED = ("b_gate", "r_mag", "b_mag")  # a gated SAE's encoder tensors in place of b_enc


class NotImportable(ActdictError, ValueError):
    """The folder holds no SAELens SAE that maps onto a variant (the message says why)."""


def _vectors_hint(folder: Path) -> str:
    """'; to import the vectors of its .npy files ...' for a folder of vectors files (not an SAE's weights),
    which the vectors import reads as one run of rows (``harvest.vector_read.vector_files``); '' otherwise."""
    from actdict.harvest.vector_read import FORMATS

    kinds = sorted({p.suffix.lower() for p in folder.glob("*")
                    if p.suffix.lower() in FORMATS and p.is_file() and not p.name.startswith(".")})
    if not kinds or (folder / WEIGHTS).is_file():
        return ""
    return (f"; to import the vectors of its {'/'.join(kinds)} files into a store: python -m "
            "actdict.harvest.vectors FOLDER STORE (docs/embeddings.md)")


def read_saelens(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json, tensors as float32) of the SAELens SAE in ``folder``."""
    f = Path(folder)
    if f.is_file():  # a vectors file (actdict import is not their import), or the SAE's weights alone
        raise NotImportable(f"{f} is a file: actdict import reads an SAELens SAE's folder ({CFG} + "
                            f"{WEIGHTS}); to import vectors (.npy, .safetensors, .parquet) into a store: "
                            "python -m actdict.harvest.vectors FILE STORE (docs/embeddings.md)")
    try:
        cfg = json.loads((f / CFG).read_text(encoding="utf-8"))
        tensors = load_file(str(f / WEIGHTS))
    except FileNotFoundError as e:
        raise NotImportable(f"{f} holds no SAELens SAE ({CFG} + {WEIGHTS}): {e.filename} is missing"
                            + _vectors_hint(f)) from e
    except (ValueError, UnicodeDecodeError, SafetensorError, OSError) as e:
        raise NotImportable(f"{f}: cannot read its SAELens files ({e})") from e
    if not isinstance(cfg, dict):
        raise NotImportable(f"{f / CFG}: not a JSON object")
    if ints := sorted(f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in tensors.items()
                      if not v.is_floating_point()):  # quantised weights: their scales are not in these files
        raise NotImportable(f"{f / WEIGHTS}: {', '.join(ints)} not floating point (quantised weights do not "
                            "import; save the SAE in float32, float16 or bfloat16)")
    return cfg, {k: v.float() for k, v in tensors.items()}


def architecture(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(SAELens architecture, our variant's params) of a SAELens cfg (v6, or the older layouts' keys)."""
    act = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"  # the latter: SAELens <= 5
    arch = cfg.get("architecture") or "standard"
    if arch == "standard" and act == "topk":  # SAELens <= 5 saved a TopK SAE as standard + a topk activation
        arch = "topk"
    if arch not in VARIANTS:
        raise NotImportable(f"SAELens architecture {arch!r} has no actdict variant (importable: "
                            f"{list(VARIANTS)})")
    if act not in ("relu", "topk" if arch == "topk" else "relu"):  # a topk cfg may name no activation (relu)
        raise NotImportable(f"a {arch} SAE with the activation function {act!r}: no actdict variant computes "
                            "it (importable: relu, and topk)")
    if (norm := cfg.get("normalize_activations") or "none") != "none":
        raise NotImportable(f"normalize_activations={norm!r}: its scale is computed from data at run time "
                            "and not saved with the SAE, so it cannot be read here (only 'none' imports)")
    if arch != "topk":
        return arch, {}
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise NotImportable("topk with rescale_acts_by_decoder_norm: not importable (sae_topk selects on "
                            "the raw pre-activations)")
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if isinstance(k, bool) or not isinstance(k, int):
        raise NotImportable(f"a topk SAE needs an integer k in its cfg, got {k!r}")
    return arch, {"topk": k}


def to_model(cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Dictionary:
    """The actdict dictionary computing what the SAELens SAE (``read_saelens``) computes, in eval mode."""
    arch, params = architecture(cfg)
    d, k = cfg.get("d_in"), cfg.get("d_sae")
    biases = GATED if arch == "gated" else ("b_enc",)  # the encoder's per-latent tensors [k]
    want = {"W_enc": (d, k), **{b: (k,) for b in biases}, "W_dec": (k, d), "b_dec": (d,)} | (
        {"threshold": (k,)} if arch == "jumprelu" else {})
    got = {name: tuple(tensors[name].shape) if name in tensors else None for name in want}
    if not (isinstance(d, int) and isinstance(k, int) and d > 0 and k > 0) or got != want:
        raise NotImportable(f"tensors {got} do not match d_in={d!r}, d_sae={k!r} (wanted {want})")
    w_enc, w_dec, b_dec = tensors["W_enc"], tensors["W_dec"], tensors["b_dec"]
    if (scale := decoder_scale(cfg, tensors, k)) is not None:  # (z * scale) W_dec = z (scale W_dec)
        w_dec = w_dec * scale[:, None]  # [k, d]
    if arch == "gated":
        state = _gated_state(cfg, tensors, w_dec)
    else:
        b_enc = tensors["b_enc"]
        if cfg.get("apply_b_dec_to_input", True):  # (x - b_dec) W + b_enc = x W + (b_enc - b_dec W)
            b_enc = b_enc - b_dec @ w_enc  # [k]
        if arch == "jumprelu":
            state = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec,
                     "log_threshold": tensors["threshold"].clamp_min(0).log()}
        else:
            state = {"encoder.weight": w_enc.T, "encoder.bias": b_enc, "decoder.weight": w_dec.T,
                     "decoder.bias": b_dec}
    if not all(bool(torch.isfinite(t).all()) for n, t in state.items() if n != "log_threshold"):
        raise NotImportable("its weights hold NaN or infinite values")
    model = make(VARIANTS[arch], d, k, **params)
    model.load_state_dict({name: t.contiguous() for name, t in state.items()})
    return model.eval()


def _gated_state(cfg: dict[str, Any], tensors: dict[str, Tensor], w_dec: Tensor) -> dict[str, Tensor]:
    """``sae_gated``'s weights from a SAELens gated SAE's. Ours always subtracts b_dec from x; a cfg
    without ``apply_b_dec_to_input`` adds b_dec W_enc back into both paths' biases: x W = (x - b_dec) W +
    b_dec W, and the magnitude path scales it by exp(r_mag)."""
    w_enc, b_dec, r_mag = tensors["W_enc"], tensors["b_dec"], tensors["r_mag"]
    back = torch.zeros_like(r_mag) if cfg.get("apply_b_dec_to_input", True) else b_dec @ w_enc  # [k]
    return {"W_enc": w_enc, "b_enc": tensors["b_gate"] + back, "W_dec": w_dec, "b_dec": b_dec,
            "r_mag": r_mag, "b_mag": tensors["b_mag"] + back * r_mag.exp()}


def decoder_scale(cfg: dict[str, Any], tensors: dict[str, Tensor], k: int) -> Tensor | None:
    """SAELens <= 5's ``finetuning_scaling_factor`` [k] (saved as that or as ``scaling_factor``), by which its
    decode multiplies the codes when the cfg's ``finetuning_scaling_factor`` is true; None when there is none
    (or, as SAELens reads it, a ``scaling_factor`` of ones that the cfg does not apply)."""
    name = next((n for n in ("finetuning_scaling_factor", "scaling_factor") if n in tensors), None)
    scale = tensors.get(name) if name else None
    if not cfg.get("finetuning_scaling_factor"):
        if scale is not None and not (name == "scaling_factor" and bool((scale == 1).all())):
            raise NotImportable(f"its weights hold {name}, which its cfg does not apply "
                                "(finetuning_scaling_factor false): not importable")
        return None
    if scale is None or tuple(scale.shape) != (k,) or not bool(torch.isfinite(scale).all()):
        got = None if scale is None else tuple(scale.shape)
        raise NotImportable(f"finetuning_scaling_factor true, but its weights hold no finite scaling factor "
                            f"of d_sae={k} values (got {got})")
    return scale


def import_saelens(src: str | Path, dest: str | Path, overwrite: bool = False, hook: str | None = None
                   ) -> tuple[Path, dict[str, Any]]:
    """Write the SAELens SAE in ``src`` as the checkpoint folder ``dest`` (``<run_dir>/dicts/<name>``: new, or
    an earlier import of it when ``overwrite``) -> (dest, its cfg.json record). ``hook``: the store hook it
    reads, in place of the one its cfg.json names (another name for the same activations, e.g. an SAE of
    ``blocks.1.hook_resid_pre`` on a store of ``blocks.0.hook_resid_post``)."""
    src, dest = Path(src), Path(dest)
    cfg, tensors = read_saelens(src)
    model = to_model(cfg, tensors)
    if dest.parent.name != "dicts":
        raise NotImportable(f"{dest}: import into a run folder's dicts/ (RUN_DIR/dicts/NAME), where analysis "
                           "finds dictionaries")
    if why := bad_name(dest.name):
        raise NotImportable(f"{dest}: {why}")
    if hook is not None and not is_hook_name(hook):  # no store can hold it: analysis would refuse it late
        raise NotImportable(f"--hook {hook!r} cannot name a store's hook (a non-empty name without '/', not "
                            "starting with '.')")
    run_dir = dest.parent.parent
    check_not_linked([run_dir / "dicts", dest], "the imported SAE")
    with folder_lock(str(run_dir), f"run folder {run_dir}"):  # made if missing; one writer, as a training
        check_writable([run_dir / "dicts"], "the imported SAE's files",
                       elsewhere="import it into another run folder")  # made here when missing
        return _write(src, dest, cfg, model, overwrite, hook)


def _write(src: Path, dest: Path, cfg: dict[str, Any], model: Dictionary, overwrite: bool,
           store_hook: str | None = None) -> tuple[Path, dict[str, Any]]:
    if dest.exists():
        old = checkpoint.finished_record(dest) if (dest / checkpoint.CFG).is_file() else None
        held = [p.name for p in dest.iterdir()] if dest.is_dir() else [dest.name]
        again = old is not None and "imported" in old  # an earlier import, which --overwrite replaces
        if held and not (overwrite and again):
            raise NotImportable(f"{dest} holds " + ("an imported SAE already: pass --overwrite to replace "
                                                    "it" if again else f"{held[:5]}: pass a new name"))
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or None  # hook_point: older
    record = {"finished": True, "imported": {
        "from": str(src.resolve()), "format": "saelens", "architecture": architecture(cfg)[0],
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "sae_lens_version": meta.get("sae_lens_version"), "model_name": meta.get("model_name") or
        cfg.get("model_name"), "hook_name": hook, "dtype": cfg.get("dtype")}}
    if store_hook:  # the store's name for it, given on the command line: the SAE's own stays in imported
        record["store"] = {"hook": store_hook}
    elif isinstance(hook, str):
        record["store"] = {"hook": hook}
    checkpoint.save(dest, model, record)
    return dest, json.loads((dest / checkpoint.CFG).read_text())


def main(argv: list[str] | None = None) -> int:
    """``actdict import SAELENS_DIR RUN_DIR/dicts/NAME`` (also ``python -m actdict.train.saelens_import``)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="actdict import", description="import an SAE in SAELens' on-disk format "
                                "as a dictionary of a run folder, for actdict analyze and actdict lens")
    p.add_argument("src", help="a folder with cfg.json + sae_weights.safetensors (SAELens SAE.save_model)")
    p.add_argument("dest", help="RUN_DIR/dicts/NAME: the dictionary's new folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import in DEST")
    p.add_argument("--hook", help="the store hook it reads, in place of its cfg.json's hook_name (another "
                   "name for the same activations: blocks.1.hook_resid_pre is blocks.0.hook_resid_post)")
    a = p.parse_args(argv)
    try:
        dest, record = import_saelens(a.src, a.dest, a.overwrite, a.hook)
    except ActdictError as e:
        print(printable(f"actdict: {type(e).__name__}: {e}"), file=sys.stderr)
        return 2
    imp = record["imported"]
    hook = f", hook {imp['hook_name']}" if imp["hook_name"] else ", no hook named"
    if a.hook:
        hook += f", read from the store's {a.hook}"
    print(one_line(f"imported {a.src} -> {dest}: {imp['architecture']} SAE as {record['variant']} (d "
                   f"{record['d']}, k {record['k']}{hook})"))  # paths, a hook: what the user typed
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
