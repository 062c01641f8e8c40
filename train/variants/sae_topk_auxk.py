"""SAE-TopK with the AuxK loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; official code
openai/sparse_autoencoder ``sparse_autoencoder/train.py``: ``FastAutoencoder``, ``main``'s loss and
``init_from_data_``; ``sparse_autoencoder/kernels.py``: ``normalized_mse``).

* pre = (x - b_pre) @ W_enc + b_enc with b_pre = ``b_dec`` (tied, as in the official code's ``pre_bias``);
  z = relu(TopK_k(pre)) (the k largest pre-activations of each row, then ReLU); x_hat = z @ W_dec + b_pre.
* dead latents: a latent is dead when it has not fired (z > 1e-3, the official test) for more than
  ``dead_tokens`` training tokens (official: 10M tokens, counted in steps of the batch size; we count rows).
  The official count of a latent that fires is 1 after its step, not 0, so once it has fired it is dead
  one step sooner than here (from the start of training the two agree).
* AuxK, as the official training loss: z_aux = relu(TopK_{k_aux}(pre * dead_mask)) (the live latents'
  pre-activations zeroed, then the top k_aux), decoded with the bias as every official decode is:
  L_aux = nmse(z_aux @ W_dec + b_pre, x - x_hat + b_pre), x_hat and the target's b_pre detached. Its value
  is the paper's nmse(z_aux @ W_dec, e), e = x - x_hat; the bias adds a gradient on b_pre (pulling it
  towards the batch's mean residual), and the term is computed on every training step: with no dead latent
  z_aux = 0 and L_aux = nmse(b_pre, e + b_pre) still moves b_pre (the paper's e_hat = W_dec z has no bias,
  hence no such gradient; we follow the code).
* loss = nmse(x_hat, x) + alpha * L_aux, alpha = ``auxk_coef`` = 1/32, with the official normalised MSE
  nmse(r, t) = mean_elems (r - t)^2 / mean_elems (mean_batch(t) - t)^2. (Official: the main term is
  mse * a fixed ``mse_scale`` computed once from a data sample = 1/var of the data; we use the same quantity
  estimated on each batch, an open choice that only rescales the step; under torchrun on the global batch,
  every rank's rows, so that the ranks' averaged gradient is the one process's.)
* unit-norm decoder rows with gradient projection; encoder init = decoder^T; b_enc = b_pre = 0 (``_tied``).
  Open choices of init (the protocol builds a model before it sees data): the official ``init_from_data_``
  sets b_pre to the geometric median of a data sample and divides W_enc so that random unit-norm inputs
  reconstruct at norm 1 on average (paper App. A.1: this scaling had no or a weakly negative effect in
  their ablations); ours keeps W_enc's rows at unit norm and b_pre at 0. Official directions: nn.Linear's
  uniform init; ours: uniform on the sphere.
* Not here (the loop's, or not done): the official Adam (lr 1e-4, eps 6.25e-10), its optional weight EMA,
  and the per-row standardisation of inputs (``normalize``, layer-norm style) of the released TopK
  autoencoders in the official ``model.py`` (``train.py`` does not standardise; the loop's ``normalize``
  scales the whole data set instead).
* ``Forward.codes`` = z, ``activity`` = log|z| (both dense [B, k], no grad, built only when read);
  ``active_side = "high"``.
* Sparse path (``_sparse``): pre is computed densely without grad (the top-k selections need all of it);
  only the kept entries (topk per row, and k_aux per row for AuxK) are differentiated, with sparse
  gradients for W_enc, b_enc and b_pre (``gather_linear``), and decoded without a dense code
  (``sparse_decode``). Loss and gradients equal the dense computation's to float rounding.

params: ``topk`` (k, default 32), ``k_aux`` (256, clipped to the dictionary size), ``auxk_coef`` (1/32),
``dead_tokens`` (10_000_000): the official ``train.py`` ``Config``'s values. Its k_aux is a width's: that
``Config`` fixes ``auxk = 256`` beside ``d_model = 768`` (GPT-2 small), and the paper (App. A.2) takes
k_aux "a power of two close to d_model / 2" (at 768, d/2 = 384 lies midway between 256 and 512: the code's
256 is one of the two); saprmarks/dictionary_learning's port takes d // 2 (``activation_dim // 2``). Ours
stays the code's 256 whatever d (= d/2 at Pythia-70m's d = 512): at another width set ``k_aux`` by the
paper's rule, e.g. 2048 for d = 4096.
"""

from __future__ import annotations

import torch
from torch import Tensor

from actdict.config import ConfigError
from actdict.train import dist as dist_
from actdict.train.protocol import Forward, register, wants_input_grad
from actdict.train.variants._sparse import Pattern, sparse_decode
from actdict.train.variants._tied import DeadTracker, TiedSAE, fired_latents, sparse_codes


def nmse(recon: Tensor, target: Tensor) -> Tensor:  # [B, d] each -> scalar
    """Official ``normalized_mse``: MSE over the MSE of predicting the batch mean of the target (a constant:
    the target is data or a detached residual)."""
    return (recon - target).pow(2).mean() / spread(target.detach()).clamp_min(1e-12)


def spread(t: Tensor) -> Tensor:  # t [B, d] -> scalar: mean over rows and dims of (batch mean - t)^2
    """The batch's spread around its mean; under torchrun that of the global batch (``dist.batch_mean``
    twice: the mean, then the squared deviations from it)."""
    if dist_.group_size() == 1:
        return (t.mean(0, keepdim=True) - t).pow(2).mean()
    return dist_.batch_mean((t - dist_.batch_mean(t)).pow(2)).mean()


@register
class SAETopKAuxK(TiedSAE):
    variant = "sae_topk_auxk"
    autocast_note = "bf16 pre-activations change which dead latents AuxK picks (22% off in the contract test)"
    default_params = {"topk": 32, "k_aux": 256, "auxk_coef": 1 / 32, "dead_tokens": 10_000_000}
    positive = ("k_aux", "dead_tokens")
    batch_loss = True  # nmse divides by the batch's spread around its mean: a batch of 1 row has none

    def __init__(self, d: int, k: int, **params) -> None:
        super().__init__(d, k, **params)
        if not 1 <= int(self.params["topk"]) <= k:
            raise ConfigError(f"{self.variant}: topk must be in 1..k={k}, got {self.params['topk']}")
        self.dead = DeadTracker(k)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        if wants_input_grad(x) and not self.training:  # attribution: the dense composition
            pre = self.pre(x)  # [B, k]
            top = pre.topk(int(self.params["topk"]), dim=-1)  # [B, topk]
            z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))  # [B, k]
            return Forward(x_hat=self.decode(z), codes=z, activity=lambda: sparse_codes(z), extras={})
        with torch.no_grad():
            pre = self.pre(x)  # [B, k]
            top = pre.topk(int(self.params["topk"]), dim=-1)  # [B, topk]
        pat = Pattern.from_topk(top.indices, self.k)
        vals = torch.relu(self.gather_pre(x, pre, pat))  # [N] kept z
        extras: dict[str, Tensor] = {}
        if self.training:
            # relu(v) > 1e-3 iff v > 1e-3
            fired = fired_latents(top.indices.reshape(-1), (top.values > 1e-3).reshape(-1), self.k)  # [k]
            self.dead.update(fired, len(x))
            dead = self.dead.dead(int(self.params["dead_tokens"]))  # [k]
            if dead.any():
                k_aux = min(int(self.params["k_aux"]), self.k)
                with torch.no_grad():  # live latents' pre-acts zeroed, as official
                    aux = Pattern.from_topk((pre * dead).topk(k_aux, dim=-1).indices, self.k)
                aux_pre = self.gather_pre(x, pre, aux)  # [B * k_aux]
                aux_vals = torch.relu(aux_pre * dead[aux.cols].to(pre.dtype))  # [B * k_aux], 0 at live ones
                extras["e_hat"] = sparse_decode(aux_vals, self.W_dec, aux) + self.b_dec  # [B, d]
            else:  # z_aux = 0: the official decode is b_pre alone
                extras["e_hat"] = self.b_dec.expand_as(x)  # [B, d]
        return self.sparse_forward(vals, pat, extras)

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        main = nmse(out.x_hat, x)
        if "e_hat" in out.extras:  # training: the target e + b_pre, as the official loss
            aux = nmse(out.extras["e_hat"], x - out.x_hat.detach() + self.b_dec.detach())
        else:  # eval
            aux = torch.zeros((), device=x.device)
        sse = (x - out.x_hat).pow(2).sum(-1).mean().detach()
        return {"loss": main + self.params["auxk_coef"] * aux, "nmse": main.detach(), "auxk": aux.detach(),
                "sse": sse, "dead": self.dead.dead(int(self.params["dead_tokens"])).sum().float()}

    def to_saelens(self) -> dict:
        return self._saelens("topk", k=int(self.params["topk"]))
