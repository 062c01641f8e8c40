"""Deep encoder / decoder bodies of the paper's synthetic experiments (App. D.2), shared by SAEs and VAEs.

* :func:`swish_mlp` (``encoder="mlp"``, the linear-subspace set): 4 Linear layers joined by Swish, hidden
  width ``hidden``, the last one linear (no activation on the output).
* :func:`res_mlp` (``encoder="resmlp"``, the MLP-manifold set): "3 residual blocks, each of 3 linear layers,
  hidden 8k". Our reading (the text gives no more): Linear(d, H); 3 x [h + L3(s(L2(s(L1(s(h))))))] with
  s = Swish and every L a Linear(H, H); then Swish, Linear(H, out).
* :func:`res_mlp_bn` (``encoder="resmlp_bn"``): the authors' ``MLP_Encoder`` of ``models.py`` (below), for
  reproducing their MLP-manifold runs exactly; ``hidden`` is its stream width (default 2k, so the blocks'
  inner width is 8k). Trains in one process only (``dist.batch_statistics``).
* :func:`leaky_mlp` (``decoder="mlp"``, the MLP-manifold set): "2 layer MLPs activated by leaky ReLU with
  slope 0.2": Linear(k, H), LeakyReLU(0.2), Linear(H, d). The hidden width is not stated: ours is
  ``decoder_hidden``, else ``hidden``, else 8k (:func:`make_decoder`).

Where these differ from the authors' code (``models.py`` of github.com/vegetablest-dog/VAEase, read after
these were written; docs/results.md's Table 2 was made with ours, and meets the paper's targets;
``encoder="resmlp_bn"``, ``decoder="mlp"`` with ``decoder_hidden`` = 2d, and ``head="clip"`` give theirs):

* ``mlp`` matches ``Linear_Encoder`` / ``Sparse_Encoder`` (4 Linear layers, width 2k, Swish); with the
  VAEs' ``head="clip"`` it is ``Linear_Encoder`` exactly (the SAEs add their ReLU after it, ``_sae``).
* ``resmlp``: the official ``MLP_Encoder`` keeps a residual stream of width 2k, not 8k: Linear(d, 2k),
  BatchNorm, Swish, then 3 ``ResMLP`` blocks (Linear(2k, 8k), Swish, Linear(8k, 8k), BatchNorm, Swish,
  Linear(8k, 2k), BatchNorm, Swish, plus the identity), then Linear(2k, out). Ours has no BatchNorm (batch
  statistics would differ between one process and torchrun ranks, and between train and eval mode) and a
  stream of width 8k. ``resmlp_bn`` is the official body; its BatchNorm layers are torch's defaults
  (momentum 0.1, eps 1e-5), normalise with the batch's statistics in training and the running ones in
  evaluation (analysis, export, ``actdict lens``). The one official synthetic script we could read
  (``sync_vaep_linear.py``, a body without BatchNorm) evaluates without ``.eval()``; done so with a
  BatchNorm body, a test batch would be normalised by its own statistics. Ours is torch's convention.
* the MLP decoder: the official ``FCNDecoder`` is Linear(k, 2d), LeakyReLU(0.2), Linear(2d, d): width 2d
  (pass ``decoder_hidden`` = 2d for it); ours defaults to 8k.
"""

from __future__ import annotations

import numbers

from torch import Tensor, nn

from actdict.config import ConfigError

ENCODERS = ("linear", "mlp", "resmlp", "resmlp_bn")
DECODERS = ("linear", "mlp")
ARCH = {"encoder": "linear", "decoder": "linear", "hidden": 0, "decoder_hidden": 0}  # widths: 0 = default


def check_arch(variant: str, encoder: str, decoder: str, hidden: int, decoder_hidden: int) -> None:
    """The architecture keys of a variant's params (``ARCH``) name known bodies and whole widths >= 0, and
    a width is given only to a body that has it."""
    if encoder not in ENCODERS or decoder not in DECODERS:
        raise ConfigError(f"{variant}: encoder must be one of {ENCODERS} and decoder one of {DECODERS}, got "
                          f"{encoder!r}, {decoder!r}")
    for name, width in (("hidden", hidden), ("decoder_hidden", decoder_hidden)):
        whole = isinstance(width, numbers.Real) and not isinstance(width, bool) and float(width).is_integer()
        if not (whole and width >= 0):
            raise ConfigError(f"{variant}: {name} must be an integer >= 0 (0 = the default width), got "
                              f"{width!r}")
    if decoder_hidden and decoder == "linear":
        raise ConfigError(f"{variant}: decoder_hidden sets the MLP decoder's width, and the decoder is "
                          "'linear': add decoder: mlp, or leave decoder_hidden out")
    if hidden and encoder == decoder == "linear":
        raise ConfigError(f"{variant}: hidden sets the width of an MLP encoder or decoder, and both are "
                          "'linear': add encoder: mlp | resmlp | resmlp_bn or decoder: mlp, or leave it out")


def default_hidden(encoder: str, k: int) -> int:
    """The paper's hidden width of an encoder body: 2k for ``mlp`` and ``resmlp_bn`` (its stream), 8k for
    ``resmlp``."""
    return 8 * k if encoder == "resmlp" else 2 * k


DECODER_HIDDEN = 8  # the MLP decoder's default width, in units of k (not stated by the paper: ours)


def swish_mlp(d_in: int, d_out: int, hidden: int, layers: int = 4) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Linear(d_in, hidden)]
    for i in range(layers - 1):
        mods += [nn.SiLU(), nn.Linear(hidden, d_out if i == layers - 2 else hidden)]
    return nn.Sequential(*mods)


class ResBlock(nn.Module):
    def __init__(self, width: int, layers: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(*(m for _ in range(layers) for m in (nn.SiLU(), nn.Linear(width, width))))

    def forward(self, h: Tensor) -> Tensor:  # h: [B, width]
        return h + self.body(h)


def res_mlp(d_in: int, d_out: int, hidden: int, blocks: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), *(ResBlock(hidden) for _ in range(blocks)),
                         nn.SiLU(), nn.Linear(hidden, d_out))


class BNResBlock(nn.Module):
    """The official ``ResMLP(w, w)`` block: h + Swish(BN(Linear(4w, w)(Swish(BN(Linear(4w, 4w)(Swish(
    Linear(w, 4w)(h))))))))."""

    def __init__(self, width: int, extension: int = 4) -> None:
        super().__init__()
        inner = extension * width
        self.body = nn.Sequential(nn.Linear(width, inner), nn.SiLU(), nn.Linear(inner, inner),
                                  nn.BatchNorm1d(inner), nn.SiLU(), nn.Linear(inner, width),
                                  nn.BatchNorm1d(width), nn.SiLU())

    def forward(self, h: Tensor) -> Tensor:  # h: [B, width]
        return h + self.body(h)


def res_mlp_bn(d_in: int, d_out: int, width: int, blocks: int = 3) -> nn.Sequential:
    """The official ``MLP_Encoder`` body: Linear(d_in, w), BN, Swish, 3 ``BNResBlock``, Linear(w, d_out)."""
    return nn.Sequential(nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.SiLU(),
                         *(BNResBlock(width) for _ in range(blocks)), nn.Linear(width, d_out))


def leaky_mlp(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, d_out))


def deep_encoder(kind: str, d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    """``mlp``, ``resmlp`` or ``resmlp_bn`` body mapping [B, d_in] -> [B, d_out] (``hidden`` must be
    resolved, > 0)."""
    body = {"mlp": swish_mlp, "resmlp": res_mlp, "resmlp_bn": res_mlp_bn}[kind]
    return body(d_in, d_out, hidden)


def make_decoder(kind: str, k: int, d: int, hidden: int = 0, decoder_hidden: int = 0) -> nn.Module:
    """``linear`` (Linear(k, d)) or ``mlp`` decoder [B, k] -> [B, d]; the MLP's width is ``decoder_hidden``,
    else ``hidden``, else ``DECODER_HIDDEN * k`` (0 = not given)."""
    if kind == "linear":
        return nn.Linear(k, d)
    return leaky_mlp(k, d, int(decoder_hidden) or int(hidden) or DECODER_HIDDEN * k)
