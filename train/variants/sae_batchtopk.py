"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders"; official code
bartbussmann/BatchTopK ``sae.py``).

* acts = relu((x - b_dec) @ W_enc + b_enc)  [B, k].
* training (``self.training``): keep the k*B largest entries of the whole batch ``acts`` (flattened), zero the
  rest, so the mean L0 per row is k while single rows may use more or fewer latents.
* inference (eval mode): a single threshold theta, z = acts * (acts > theta). theta is estimated during
  training as a running mean of the smallest kept (positive) activation of each batch:
  theta <- beta * theta + (1 - beta) * min_{z>0} z, with beta = ``threshold_beta`` (0.999; the first batch
  sets theta directly). Before any training theta = 0. ``sample`` is ignored: the train/inference switch is
  the module's mode, so ``checkpoint.load`` (eval) and analysis use the threshold. How theta is estimated
  is an open choice, and the references differ: the paper: "the average of the minimum positive
  activation values across batches"; the official ``sae.py`` (b454c16) has no inference threshold (its
  forward is the batch top-k in every mode); saprmarks/dictionary_learning ``trainers/batch_top_k.py``:
  this EMA with beta 0.999, but updated only after ``threshold_start_step`` = 1000 steps (its first update
  sets theta), so the untrained dictionary's values never enter it; SAELens ``saes/batchtopk_sae.py``: an
  EMA with weight ``topk_threshold_lr`` = 0.01 (beta 0.99) started from theta = 0. Ours starts at the first
  batch; ``threshold_note`` says when that start still weighs more than 5% of theta at a run's end.
  ``threshold_skip_steps`` = N > 0 starts it later, as dictionary_learning does: the batches of the first N
  optimizer steps leave theta at 0 and the batch of step N + 1 sets it (dictionary_learning's update runs
  when its 0-based step > ``threshold_start_step``, so its 1000 is our 1001; a batch with no positive kept
  value gives it 0 there, and leaves theta as it is here). The step count is a buffer only when N > 0 (other
  checkpoints keep their keys), so a resumed run skips no step twice.
* x_hat = z @ W_dec + b_dec.
* loss (official): l2 = mean_elems (x_hat - x)^2 + aux, aux = ``aux_penalty`` * mean_elems (x_aux - r)^2 with
  r = x - x_hat (not detached, as official), x_aux = TopK_{min(k_aux, n_dead)}(acts[:, dead]) @ W_dec[dead]
  (no bias: the official ``sae.py`` at b454c16, the revision whose config gives the defaults below; an
  earlier one added b_dec), dead = not fired in any of the last ``n_batches_to_dead`` batches. aux = 0 when
  no latent is dead. No L1 term (official l1_coeff = 0).
* Encoder bias: the paper's formula has b_enc, the official ``BatchTopKSAE`` (b454c16) none; we keep it,
  initialised at 0 (so the two start equal).
* unit-norm decoder rows + gradient projection, encoder init = decoder^T, biases 0 (see ``_tied``). Open
  choices of init and input: the official W_enc is kaiming-uniform, each latent's column of norm about
  sqrt(2d/k), and only W_dec = W_enc^T is normalised; ours starts W_enc's columns at unit norm too. The
  official config standardises each input row (``input_unit_norm``: true; mean 0, std 1 per row, undone
  on the output); not done here (the loop's ``normalize`` scales the whole data set instead).
* dictionary_learning's trainer differs in AuxK (OpenAI's normalised loss with a detached residual, dead =
  10M tokens idle, k_aux = d/2); ours is the official repository's.
* ``Forward.codes`` = z, ``activity`` = log|z| (``activity``, and in training also ``codes``, built only when
  read); ``active_side = "high"``.
* Sparse training path (``_sparse``): pre is computed densely without grad (the batch top-k needs all of
  it); only the kept entries (a variable number per row, kept as a CSR-like pattern, so no padding) and
  the aux entries are differentiated, with sparse gradients for W_enc, b_enc and b_dec (``gather_linear``),
  and decoded without a dense code (``sparse_decode``). Loss and gradients equal the dense computation's to
  float rounding. Eval (threshold) mode stays dense: no backward there, and the code is needed anyway.
* Under torchrun the selection is that of the global batch (each rank sends its top k*B, the k*B-th
  largest of all is the cut; ties at the cut are all kept), and dead counts and theta are the global
  batch's on every rank, so 2 ranks train as one process does (tests/test_ddp.py).

params: ``topk`` (k, default 32), ``k_aux`` (512), ``aux_penalty`` (1/32), ``n_batches_to_dead`` (5),
``threshold_beta`` (0.999): the official defaults; ``threshold_skip_steps`` (0: theta from the first batch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from actdict.config import ConfigError
from actdict.train import dist as dist_
from actdict.train.protocol import Forward, register
from actdict.train.variants._sparse import Pattern, sparse_decode
from actdict.train.variants._tied import DeadTracker, TiedSAE, fired_latents, sparse_codes

FORGOTTEN = 0.05
"""The weight of the first batch's value in theta at a run's end under which ``threshold_note`` is silent."""


def threshold_note(beta: float, steps: int, skip: int = 0) -> str | None:
    """For a run of ``steps`` steps (100 or more): a note when theta's first value (the untrained
    dictionary's; step skip + 1's under ``threshold_skip_steps`` = skip) still weighs more than ``FORGOTTEN``
    of theta at the end (beta ** (steps - skip - 1)), so that theta, and the L0 that analysis and exports
    see, lag behind the training; for a run of any length whose steps ``skip`` covers, that theta is never
    estimated; None otherwise."""
    if 0 < steps <= skip:
        return (f"threshold_skip_steps {skip:,} leaves none of this run's {steps:,} steps to estimate the "
                "inference threshold (what analysis and exports use): it stays 0, so inference keeps every "
                f"positive activation (L0 far above topk); set threshold_skip_steps below {steps:,}")
    n = steps - skip - 1  # the updates after theta's first value
    if steps < 100 or n <= 0 or (left := beta ** n) <= FORGOTTEN:
        return None
    enough = math.floor(FORGOTTEN ** (1 / n) * 1000) / 1000
    first = (f"its first value, from step {skip + 1:,}'s batch (threshold_skip_steps {skip:,})," if skip else
             "the first batch's value, from the untrained dictionary,")
    return (f"the inference threshold (what analysis and exports use) is a running mean of each batch's "
            f"smallest kept activation (threshold_beta {beta:g}), and at the end of this run's {steps:,} "
            f"steps {first} still weighs {left:.0%} of it, so the L0 at inference can fall below topk: "
            f"threshold_beta {enough:g} or lower lets this run's later batches set it")


@register
class SAEBatchTopK(TiedSAE):
    variant = "sae_batchtopk"
    default_params = {"topk": 32, "k_aux": 512, "aux_penalty": 1 / 32, "n_batches_to_dead": 5,
                      "threshold_beta": 0.999, "threshold_skip_steps": 0}
    positive = ("k_aux", "n_batches_to_dead")

    def __init__(self, d: int, k: int, **params) -> None:
        super().__init__(d, k, **params)
        if not 1 <= int(self.params["topk"]) <= k:
            raise ConfigError(f"{self.variant}: topk must be in 1..k={k}, got {self.params['topk']}")
        if not 0 <= (beta := self.params["threshold_beta"]) < 1:
            raise ConfigError(f"{self.variant}: threshold_beta must be in [0, 1), got {beta}")
        self.dead = DeadTracker(k, unit="batches")
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("threshold_seen", torch.tensor(False))
        if self.skip > 0:
            self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    @property
    def skip(self) -> int:
        return int(self.params["threshold_skip_steps"])

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]
        if not self.training:
            acts = torch.relu(self.pre(x))  # [B, k]
            z = acts * (acts > self.threshold)  # [B, k]
            return Forward(x_hat=self.decode(z), codes=z, activity=lambda: sparse_codes(z), extras={"z": z})
        with torch.no_grad():
            pre = self.pre(x)  # [B, k]
            acts = torch.relu(pre)
            pat, new = self._select(acts)
            if new is not None:
                self._update_threshold(new)
        vals = torch.relu(self.gather_pre(x, pre, pat))  # [N] kept z
        fired = fired_latents(pat.cols, vals.detach() > 0, self.k)  # [k] == z.sum(0) > 0 (z >= 0)
        self.dead.update(fired, 1)
        dead = self.dead.dead(int(self.params["n_batches_to_dead"]) - 1)  # official: >= n_batches_to_dead
        extras: dict[str, Tensor] = {}
        if dead.any():
            dead_ids = dead.nonzero()[:, 0]  # [n_dead]
            with torch.no_grad():
                top_aux = acts[:, dead].topk(min(int(self.params["k_aux"]), len(dead_ids)), dim=-1)  # [B, m]
            aux = Pattern.from_topk(dead_ids[top_aux.indices], self.k)
            aux_vals = torch.relu(self.gather_pre(x, pre, aux))  # [B * min(k_aux, n_dead)]
            extras["x_aux"] = sparse_decode(aux_vals, self.W_dec, aux)  # [B, d], no bias (official)
        return self.sparse_forward(vals, pat, extras)

    def _update_threshold(self, new: Tensor) -> None:
        """theta <- beta theta + (1 - beta) new ([] each), or new at its first update; unchanged during the
        first ``threshold_skip_steps`` optimizer steps (decided on the device: no sync)."""
        beta = float(self.params["threshold_beta"])
        value = torch.where(self.threshold_seen, beta * self.threshold + (1 - beta) * new, new)
        if self.skip > 0:
            on = self.steps >= self.skip
            value = torch.where(on, value, self.threshold)
            self.threshold_seen.logical_or_(on)
        else:
            self.threshold_seen.fill_(True)
        self.threshold.copy_(value)

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()  # the unit-norm decoder rows
        if self.skip > 0:
            self.steps.add_(1)

    @classmethod
    def run_note(cls, params: dict, steps: int) -> str | None:
        p = cls.default_params | params
        return threshold_note(p["threshold_beta"], steps, int(p["threshold_skip_steps"]))

    def _select(self, acts: Tensor) -> tuple[Pattern, Tensor | None]:
        """The kept entries of acts [B, k] >= 0: the top k*B of the batch (under torchrun: of the global
        batch, found with one all-gather of each rank's top k*B), and the smallest kept positive value
        (None when nothing is positive), which updates theta."""
        per_row = min(int(self.params["topk"]), self.k)
        if dist_.group_size() == 1:
            top = acts.flatten().topk(per_row * len(acts))  # [topk * B] of the flattened [B * k]
            pat, kept = Pattern.from_flat(top.indices, len(acts), self.k), top.values
        else:  # ties at the global threshold are all kept (one process keeps torch.topk's pick of them)
            n_rows = int(dist_.reduce_(acts.new_tensor([float(len(acts))])).item())  # the global batch
            thr = dist_.global_kth_largest(acts, per_row * n_rows)
            flat = acts.flatten()
            pos = ((flat >= thr) & (flat > 0)).nonzero()[:, 0]  # zeros add nothing to z nor to a gradient
            pat, kept = Pattern.from_flat(pos, len(acts), self.k), flat[pos]
        low = kept[kept > 0].min() if (kept > 0).any() else acts.new_tensor(float("inf"))
        low = dist_.reduce_(low.reshape(1), "min")[0]
        return pat, (low if torch.isfinite(low) else None)

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        l2 = (out.x_hat - x).pow(2).mean()
        if "x_aux" in out.extras:
            aux = self.params["aux_penalty"] * (out.extras["x_aux"] - (x - out.x_hat)).pow(2).mean()
        else:
            aux = torch.zeros((), device=x.device)
        sse = (x - out.x_hat).pow(2).sum(-1).mean().detach()
        return {"loss": l2 + aux, "l2": l2.detach(), "aux": aux.detach(), "sse": sse,
                "threshold": self.threshold.detach().clone()}

    def to_saelens(self) -> dict:
        """Inference BatchTopK is a JumpReLU with one threshold for every latent (SAELens saves its BatchTopK
        SAEs the same way). theta >= 0, so relu then jump == jump on the pre-activation."""
        theta = self.threshold.detach().float().cpu().expand(self.k).clone()  # [k]
        return self._saelens("jumprelu", threshold=theta)
