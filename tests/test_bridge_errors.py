"""Failures inside TransformerLens' TransformerBridge reach the researcher as an actdict error that names the
hook or the model's architecture, the transformer-lens version and the bridge's error in a few words, before
anything is written (``harvest.models``): found on random-init tiny models (``tiny_models``)."""

import pytest
from test_harvest import harvest
from tiny_models import make_tiny

from actdict.harvest.models import HookError, tl_version


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> its model folder, built once per module on first use."""
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = make_tiny(family, tmp_path_factory.mktemp(family))
        return made[family]

    return get


def test_a_hook_that_never_fires_is_refused_as_such(tmp_path, tiny):
    """GPT-1's blocks.L.hook_resid_post never fires under the bridge: the refusal ended 'is not one vector per
    token', as if its shape were wrong, and told the researcher to harvest blocks.L.hook_resid_post."""
    with pytest.raises(HookError) as e:
        harvest(tmp_path / "run", model=str(tiny("gpt1")), hooks=["blocks.1.hook_resid_post"], max_tokens=40)
    said = str(e.value)
    assert said.startswith(f"hook 'blocks.1.hook_resid_post' (it does not fire in this model's forward: "
                           f"gated off, or never called) of {tiny('gpt1')} gives no activations to store "
                           f"under TransformerLens {tl_version()}'s TransformerBridge: harvest another hook")
    assert "the next block's hook_resid_pre" in said and "not one vector per token" not in said
    assert not (tmp_path / "run").exists()
