"""Do two dictionaries learn the same directions? Each feature's decoder direction, and for every pair of
dictionaries of one analysis the mean max cosine similarity (MMCS) of their live features' directions.

A feature's direction is the derivative of ``Dictionary.decode`` along its code at the zero code,
normalised: the decoder's column i for every linear decoder (SAEs, VAE / VAEase with the paper's bodies, a
normalised model's raw-space column times its one scale), and for an MLP decoder (the authors' ``decoder:
mlp``) the direction it starts in, not its only one. (A derivative, not decode(e_i) - decode(0): a column
shrunk to 1e-12 by a decoder penalty vanishes beside the bias in that difference.) A feature is live when
it is active on some test row (analysis's ``fires`` > 0) and its column's norm is over ``NULL`` (1e-6)
times the dictionary's largest: ``sae_l1``'s lam2 penalty shrinks the columns of rarely used features to
1e-10 and below (133 of the demo's 384 under ``NULL``, 119 still active on a few rows): their directions
are rounding noise. For dictionary A against B: each live feature of A is matched to the live feature of B
whose direction has the largest cosine with its own; ``mmcs`` is the mean of those
cosines over A's live features and ``matched`` the fraction with a cosine of at least ``MATCHED`` (0.9).
The pair is not symmetric (A's features in B, not B's in A). Shapes: k features, d input dims.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm import tqdm

from actdict.bars import bar_disabled, bar_timing

MATCHED = 0.9
NULL = 1e-6
NOTE_MACS = 10**12
"""``similarity(progress=True)`` names its cost beyond this many multiply-adds (~1 min on a core: 7 pairs of
16,384 at d = 512; a sweep of 16 such dictionaries has 240 pairs, ~20 min)."""


def null_columns(norm: Tensor) -> Tensor:
    """[k] bool: the decoder column's norm (``norm`` [k], ``directions``) is at most ``NULL`` times the
    largest (the latent changes no reconstruction: ``null_decoder``)."""
    return norm <= NULL * norm.max()


def live(fires: Tensor, norm: Tensor) -> Tensor:
    """[k] bool: active on some row (``fires`` [k] > 0) with a decoder column that is not null."""
    return (fires > 0) & ~null_columns(norm)


def directions(model, k: int, d: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """(the unit decoder direction of each feature [k, d], its norm [k]): the Jacobian of ``decode`` at the
    zero code, one column per feature (a feature whose column is 0: a row of NaN). One forward of a batch of
    d zero codes and one backward: row b's gradient of output b is the Jacobian's row b. None for a
    dictionary without ``decode``."""
    z = torch.zeros(d, k, device=device, requires_grad=True)  # [d, k]
    with torch.enable_grad():
        try:
            out = model.decode(z).float()  # [d, d]
        except NotImplementedError:
            return None
        (jac,) = torch.autograd.grad(out.diagonal().sum(), z)  # [d, k]: d x_hat_b / d z
    cols = jac.T.detach()  # [k, d]
    norm = cols.norm(dim=1)  # [k]
    return torch.where(norm[:, None] > 0, cols / norm[:, None], torch.nan), norm


@torch.no_grad()
def nearest(a: Tensor, b: Tensor, live_b: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """For each row of a [ka, d]: (the largest cosine [ka] with a row of b [kb, d] where ``live_b`` [kb] is
    True, that row's index [ka]); -inf and -1 where there is none (no live row of b, or a NaN row of a)."""
    ok = live_b & ~b.isnan().any(1)  # [kb]
    idx_b = ok.nonzero()[:, 0]  # [kb']
    best = torch.full((len(a),), float("-inf"), device=a.device)
    arg = torch.full((len(a),), -1, dtype=torch.long, device=a.device)
    if len(idx_b) == 0:
        return best, arg
    bb = b[idx_b]  # [kb', d]
    for s in range(0, len(a), chunk):
        cos = a[s:s + chunk] @ bb.T  # [c, kb']
        v, i = cos.max(1)
        good = ~v.isnan()
        best[s:s + chunk] = torch.where(good, v, best[s:s + chunk])
        arg[s:s + chunk] = torch.where(good, idx_b[i], arg[s:s + chunk])
    return best, arg


def similarity(dirs: dict[str, Tensor], live: dict[str, Tensor], progress: bool = False
               ) -> tuple[dict[str, dict[str, dict]], dict[tuple[str, str], tuple[Tensor, Tensor]]]:
    """(name -> other name -> {"mmcs": float | None, "matched": float | None, "live": int}, (name, other) ->
    ``nearest`` of name's features among other's) for every ordered pair of dictionaries whose directions
    have one size (mmcs and matched None: A has no live feature with a direction). ``progress``: a bar over
    the pairs when there are more than 2, after a line naming their cost when it is over ``NOTE_MACS``."""
    out: dict[str, dict[str, dict]] = {}
    pairs = {}
    todo = [(a, b) for a in dirs for b in dirs if a != b and dirs[a].shape[1] == dirs[b].shape[1]]
    macs = sum(len(dirs[a]) * len(dirs[b]) * dirs[a].shape[1] for a, b in todo)
    if progress and macs > NOTE_MACS:
        print(f"analyze: shared directions: {len(todo):,} pairs of dictionaries, {macs:.2g} multiply-adds "
              "(analyze.shared_directions=false skips them)")
    for a, b in tqdm(todo, desc="shared directions", unit="pair",
                     disable=bar_disabled(not progress or len(todo) <= 2), **bar_timing()):
        best, arg = pairs[a, b] = nearest(dirs[a], dirs[b], live[b])
        out.setdefault(a, {})[b] = shared_share(dirs[a], live[a], best)
    return out, pairs


def shared_share(units: Tensor, alive: Tensor, best: Tensor) -> dict:
    """{"mmcs", "matched", "live"} of dictionary A's live features (``alive`` [ka]) with a direction
    (``units`` [ka, d]) and a match in B (``best`` [ka], ``nearest``'s cosines): their mean best cosine, the
    share within cosine ``MATCHED``, how many; mmcs and matched None when there is none."""
    mine = alive & ~units.isnan().any(1) & torch.isfinite(best)  # [ka]
    n = int(mine.sum())
    cos = best[mine]
    return {"mmcs": float(cos.mean()) if n else None,
            "matched": float((cos >= MATCHED).float().mean()) if n else None, "live": n}
