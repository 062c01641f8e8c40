"""``actdict variants``: every registered variant with exactly the params a config may give it."""

import re

import pytest

from actdict.cli import main
from actdict.config import ConfigError
from actdict.train.listing import module_doc
from actdict.train.protocol import make, param_defaults, registry
from tests.test_plugins import NODECODE


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


SMALL = {"sae_topk": {"topk": 2}, "sae_topk_auxk": {"topk": 2, "k_aux": 3},
         "sae_batchtopk": {"topk": 2, "k_aux": 3},
         "sae_jumprelu": {"bandwidth": 2.0, "threshold_init": 0.5}}  # params that fit k = 16


@pytest.mark.parametrize("variant", sorted(registry()))
def test_the_shipped_contract_passes_every_variant(variant):
    from actdict.train.contract import check

    assert check(variant, SMALL.get(variant)) == {c: [] for c in ("shapes", "loss", "gradients", "round_trip",
                                                                   "training")}


UNUSED = "\n        self.unused = nn.Parameter(torch.zeros(3))\n"
BROKEN = (NODECODE.replace('"no_decode"', '"broken_contract"')  # test_plugins' variant, with a decode,
          .replace("nn.Linear(k, d)\n", "nn.Linear(k, d)" + UNUSED)
          .replace(".sum(-1).mean()", ".mean()  # a mean over elements, not each row's sum")  # a parameter
          + "    def decode(self, codes):\n        return self.dec(codes)\n")  # no loss reaches, a wrong sse


def test_check_names_what_a_broken_variant_gets_wrong(capsys, tmp_path, monkeypatch):
    """actdict variants NAME --check: a plugin author checks a variant with actdict installed, without its
    tests; each broken rule is named, the exit status 1; a params set that cannot build the variant is 2."""
    from actdict.train import protocol

    (tmp_path / "broken_contract.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(protocol, "_REGISTRY", dict(registry()))
    __import__("broken_contract")
    assert main(["variants", "broken_contract", "--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "broken_contract: the protocol's contract (k 16)"
    assert lines[1] == "  shapes     ok"
    assert lines[2].startswith("  loss       FAILED: 'sse' is ") and "row's summed squared error" in lines[2]
    assert lines[3] == "  gradients  FAILED: no gradient reaches unused"
    assert lines[4] == "  round_trip ok"
    assert main(["variants", "sae_topk", "--check"]) == 2  # topk 30 > k 16
    assert capsys.readouterr().err.startswith("actdict variants: sae_topk cannot be built at k 16 with its "
                                              "defaults (sae_topk: topk must be in 1..k=16, got 30)")
    assert main(["variants", "sae_topk", "--check", "--set", "topk=4"]) == 0
