"""Every dictionary variant; importing this package registers them all (see ``train.protocol``)."""

from actdict.train.variants import (  # noqa: F401
    lse,
    sae_batchtopk,
    sae_gated,
    sae_jumprelu,
    sae_kl,
    sae_l1,
    sae_l1_decnorm,
    sae_log,
    sae_topk,
    sae_topk_auxk,
    sosae,
    vae,
    vaease,
)
