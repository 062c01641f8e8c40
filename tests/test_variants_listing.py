"""``actdict variants``: every registered variant with exactly the params a config may give it."""

import re

import pytest

from actdict.cli import main
from actdict.config import ConfigError
from actdict.train.listing import module_doc
from actdict.train.protocol import make, param_defaults, registry


def _listing(capsys, *names):
    assert main(["variants", *names]) == 0
    return capsys.readouterr().out


def _params(block: str) -> dict[str, str]:
    """name -> value as listed in a variant's params line(s) ('params: a=1, b=2; also: c=3')."""
    line = " ".join(block.rsplit("params: ", 1)[1].split("\nmust be > 0")[0].split())
    return dict(p.split("=", 1) for p in re.split(r", |; also: ", line) if p != "none")


def test_listing_names_every_variant_with_its_params(capsys):
    out = _listing(capsys)
    blocks = {b.split("\n")[0].split(" (plugin ")[0]: b for b in out.strip().split("\n\n")}  # plugins' too
    assert sorted(blocks) == sorted(registry())
    assert sum(c.__module__.startswith("actdict.") for c in registry().values()) == 13
    assert _params(blocks["sae_l1"]) == {"lam1": "0.32", "lam2": "0.2", "encoder": "'linear'",
                                         "decoder": "'linear'", "hidden": "0", "decoder_hidden": "0"}
    assert "SAE-l1 (paper eq. 1 with h(z) = sum_j |z_j|; Cunningham et al. 2024)." in blocks["sae_l1"]
    assert _params(blocks["sae_topk_auxk"]) == {"topk": "32", "k_aux": "256", "auxk_coef": "0.03125",
                                                "dead_tokens": "10000000"}


@pytest.mark.parametrize("variant", sorted(registry()))
def test_listed_params_are_what_a_config_may_set(variant, capsys):
    """Each listed param, given its listed value, builds the variant; a name not listed is refused."""
    block = _listing(capsys, variant)
    listed = _params(block)
    assert set(param_defaults(registry()[variant])) <= set(listed)
    for name, value in listed.items():
        make(variant, 6, 600, **{name: eval(value)})  # noqa: S307 (k above every default topk, k_aux)
    with pytest.raises(ConfigError, match="unknown params|bad params"):
        make(variant, 6, 12, not_a_param=1)
    assert module_doc(registry()[variant]) in block  # the whole docstring, as written


def test_unknown_variant_is_named(capsys):
    assert main(["variants", "vaease", "vaeaes"]) == 2
    assert capsys.readouterr().err.startswith("actdict variants: unknown variant 'vaeaes'; registered: lse, ")
