"""What TransformerLens' ``TransformerBridge`` failed on, in words a researcher can act on: the model's
architecture, the transformer-lens version and the bridge's error in one line (``harvest.models`` raises
them: a load that fails, a forward or a hook the bridge fails on; ``analyze.splice`` for a splice). A
traceback from deep inside the bridge named none of these, and the load's hint to check that the folder
holds an HF model was wrong where it did.
"""

from __future__ import annotations

import re
from typing import Any


def tl_version() -> str:
    """The installed transformer-lens version (what a bridge failure depends on)."""
    from importlib.metadata import version

    return version("transformer-lens")


def in_words(e: BaseException, width: int = 200) -> str:
    """``Type: message``, the message's first line cut to ``width`` characters: an error in a few words."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:width]}{'...' if len(first) > width else ''}"


def not_the_bridges(e: BaseException) -> bool:
    """Whether ``e`` says the machine ran short, not that the bridge cannot run the model: out of memory (GPU
    or host), a CUDA or other accelerator error (a device-side assert, a lost device). Such an error from a
    forward or a load is re-raised as it is: reworded as the architecture's or a hook's failure, it would
    send the researcher to another model or transformer-lens when a smaller batch, dtype or free GPU is
    what it takes. (Ctrl-C and SIGTERM are BaseExceptions, never caught as ``Exception`` here.)"""
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError, getattr(torch, "AcceleratorError", MemoryError))):
        return True
    return isinstance(e, RuntimeError) and str(e).lstrip().startswith(_DEVICE_TROUBLE)


_DEVICE_TROUBLE = ("CUDA error", "CUDA out of memory", "CUDA driver error", "cuDNN error", "HIP error",
                   "MPS backend out of memory")
"""How torch's RuntimeErrors from a GPU begin (older torch raised them as plain RuntimeErrors)."""


def architecture(hf_cfg: Any) -> str:
    """An HF config's architectures (e.g. ``CodeGenForCausalLM``) and model_type, in words."""
    archs = ", ".join(getattr(hf_cfg, "architectures", None) or []) or "none named"
    return f"{archs}; model_type {getattr(hf_cfg, 'model_type', None)}"


def unsupported(target: str) -> str | None:
    """Why ``TransformerBridge`` cannot boot the model at ``target`` when its architecture is the reason, in
    words that list the architectures it supports; None when it has an adapter for it, or when the model's
    config cannot be read here (offline). Its own error dumped the 162 names unsorted inside a ValueError,
    and the load then said to check that the folder holds an HF model, which it did."""
    if (hf_cfg := _hf_config(target)) is None or _bridge_supports(hf_cfg) is not False:
        return None
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    names = ", ".join(sorted(SUPPORTED_ARCHITECTURES, key=str.lower))
    embed = ("for one row per document (its pooled hidden states through sentence-transformers), set "
             "harvest.mode=embeddings; for one per token, " if is_encoder(hf_cfg) else "")
    return (f"its architecture ({architecture(hf_cfg)}) is not one that TransformerLens {tl_version()}'s "
            f"TransformerBridge supports: {embed}use a model of a supported architecture, or a "
            f"transformer-lens release that supports this one. Supported: {names}")


def is_encoder(hf_cfg: Any) -> bool:
    """Whether ``hf_cfg`` is a bidirectional encoder's (BERT's kind: DistilBERT, MPNet, ModernBERT, ...): its
    model_type has a masked-LM class in transformers and it names no generating head (``ForCausalLM``,
    ``LMHeadModel``, ``ForConditionalGeneration``: BART's masked-LM class generates). Such a model embeds its
    documents with ``harvest.mode: embeddings`` whatever TransformerBridge supports."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    generates = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    archs = getattr(hf_cfg, "architectures", None) or []
    return (getattr(hf_cfg, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not any(a.endswith(generates) for a in archs))


POST_LN_ENCODERS = ("bert", "roberta", "xlm-roberta", "camembert")
"""model_types whose blocks are post-LN, h = LN1(x + attn(x)), out = LN2(h + mlp(h)), as TransformerBridge
runs them (tests/test_encoder_tokens.py checks what each residual hook holds)."""


def post_ln_note(model_type: str | None, hooks: list[str]) -> str | None:
    """The note for a harvest of a post-LN encoder's ``blocks.L.hook_attn_out`` or ``hook_resid_mid``
    (``POST_LN_ENCODERS``), whose rows are not what the names mean in a pre-LN block: hook_attn_out is h,
    the attention sublayer after its LayerNorm, and hook_resid_mid h + mlp(h), the closing LayerNorm's
    input. None for any other model or hooks."""
    odd = [h for h in hooks if h.startswith("blocks.") and h.endswith((".hook_attn_out", ".hook_resid_mid"))]
    if model_type not in POST_LN_ENCODERS or not odd:
        return None
    return (f"note: this {model_type} encoder's blocks are post-LN, so of the hooks {', '.join(odd)}: "
            "hook_attn_out holds the attention sublayer after its LayerNorm (the stream the MLP reads), not "
            "what attention adds; hook_resid_mid holds that plus the MLP's output (the closing LayerNorm's "
            "input), not hook_resid_pre + hook_attn_out (docs/harvest.md, 'Encoder families')")


def masked_lm_for(target: str) -> str | None:
    """The masked-LM class to boot the encoder at ``target`` as, when TransformerBridge has an adapter for it
    and none for the class its config.json names: a sentence-transformers RoBERTa folder names
    ``RobertaModel``, which transformer-lens 4.3.0 maps to no adapter, while it has ``RobertaForMaskedLM``
    (BERT's ``BertModel`` is mapped by its model_type); an XLM-RoBERTa (``XLMRobertaForMaskedLM``, or a
    sentence-transformers folder's ``XLMRobertaModel``) and a CamemBERT boot as ``RobertaForMaskedLM`` too
    (``SAME_MODULES``: its adapter names the same modules, and the bridge still loads the model's own
    class); a fine-tuned RoBERTa or XLM-R (``RobertaForSequenceClassification``, ``ENCODER_TASKS``) boots
    as that masked LM, as a BERT one boots by its model_type, and so does an encoder whose config.json names
    no class (its model_type's masked LM in transformers), and so does a RoBERTa-family causal LM
    (``RobertaForCausalLM``, ``XLMRobertaForCausalLM``, ``CamembertForCausalLM``: ``CAUSAL_AS_MASKED``). The
    encoder's weights load into that class as they are (a masked-LM head its checkpoint lacks is left
    random: ``untrained_hooks``); None otherwise."""
    if (hf_cfg := _hf_config(target)) is None or _bridge_supports(hf_cfg) is not False:
        return None
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    arch, kind = (getattr(hf_cfg, "architectures", None) or [""])[0], getattr(hf_cfg, "model_type", None)
    task = not arch or arch.endswith(ENCODER_TASKS)  # no class named, or a fine-tuned encoder's
    causal = kind in CAUSAL_AS_MASKED and arch.endswith("ForCausalLM")  # RoBERTa's lm_head: the same layout
    if not (arch.endswith(("Model", "ForMaskedLM")) or task and is_encoder(hf_cfg) or causal):
        return None  # a generating head (ForCausalLM, ...): no encoder of ours
    base = re.sub(r"(Model|For[A-Z]\w*)$", "", arch)  # RobertaForSequenceClassification: Roberta
    masked = SAME_MODULES.get(kind, f"{base}ForMaskedLM" if arch else MODEL_FOR_MASKED_LM_MAPPING_NAMES[kind])
    return masked if masked in SUPPORTED_ARCHITECTURES else None


ENCODER_TASKS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                 "ForMultipleChoice")
"""How the classes of a fine-tuned encoder end (a classifier, a tagger, a reader): the encoder's weights and a
task head, no masked-LM head; ``masked_lm_for`` boots a RoBERTa or XLM-R one as its masked LM, as the bridge
boots a BERT one by its model_type."""

SAME_MODULES = {"xlm-roberta": "RobertaForMaskedLM", "camembert": "RobertaForMaskedLM"}
"""model_type -> the supported architecture whose TransformerBridge adapter fits a model of that type, which
transformer-lens 4.3.0 has no adapter for: transformers' XLM-RoBERTa and CamemBERT classes are RoBERTa's
code (the same modules, embeddings, post-LN blocks and position ids after the padding index), so RoBERTa's
adapter hooks them as they are (``tests/test_encoder_tokens.py``: every block's rows equal HF's hidden
states)."""


CAUSAL_AS_MASKED = ("roberta", "xlm-roberta", "camembert")
"""model_types whose ``ForCausalLM`` class (a decoder-configured RoBERTa, ``is_decoder: true``) is the masked
LM's modules under another name: the encoder (``roberta``) and ``lm_head`` (dense, LayerNorm, decoder) are
RobertaForMaskedLM's, so it boots as that masked LM with its own trained head (``masked_lm_for``). The bridge
runs HF's own forward, which reads ``is_decoder`` from the config: attention stays causal (each row sees
the tokens before it), the rows are HF's hidden states and ``hook_unembed`` its next-token logits
(``tests/test_encoder_tokens.py``), though the bridge calls the model bidirectional. It was refused as an
unsupported architecture. (BERT's ``BertLMHeadModel`` boots by its model_type.)"""


def failed_on_supported(target: str, e: Exception) -> str | None:
    """Why the load of ``target`` failed when the bridge supports its architecture and still failed on it
    (a Falcon with new_decoder_architecture and num_kv_heads 2: split_with_sizes), in words that name the
    architecture, the transformer-lens version and the error in one line; None when the model's config
    cannot be read here (not an HF model folder) or the bridge lacks its architecture (``unsupported``).
    The load said to check that the folder holds an HF model, which it did."""
    if (hf_cfg := _hf_config(target)) is None or not _bridge_supports(hf_cfg):
        return None
    return (f"TransformerLens {tl_version()}'s TransformerBridge supports its architecture "
            f"({architecture(hf_cfg)}) but failed to load this model ({in_words(e)}): where the error "
            "is the bridge's (a shape, a missing attribute), this configuration is one it does not handle: "
            "use another model of this architecture, or a transformer-lens release that loads this one")


def about_files(e: BaseException) -> bool:
    """Whether a load's error ``e`` is about the model's files, not the bridge: missing (an OSError: a folder
    with config.json and no weights; a hub model offline whose weights are not cached), or cut short (a
    SafetensorError, a pickle's UnpicklingError). ``failed_on_supported`` would call such a model a
    configuration the bridge does not handle, and the hub's offline advice was lost."""
    import pickle

    from safetensors import SafetensorError

    return isinstance(e, (OSError, SafetensorError, pickle.UnpicklingError))


def weights_missing(target: str) -> str | None:
    """What to do when a load of the folder ``target`` failed on its files (``about_files``) and an HF config
    reads there, so that a model folder it is: its weight files are missing or incomplete. None when no
    config reads (not an HF model folder: the load says so)."""
    if _hf_config(target) is None:
        return None
    return ("its config reads, but its weight files (model.safetensors or pytorch_model.bin, or their shards "
            "and index) are missing or cut short: copy or download the model again, whole")


def _hf_config(target: str) -> Any:
    """The HF config at ``target`` (offline), or None: an unknown model_type, no config here."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(target, local_files_only=True)
    except Exception:
        return None


def _bridge_supports(hf_cfg: Any) -> bool | None:
    """Whether TransformerBridge has an adapter for the architecture of ``hf_cfg``; None when this
    transformer-lens has another layout, and cannot tell."""
    try:
        from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config
    except ImportError:
        return None
    try:
        determine_architecture_from_hf_config(hf_cfg)
        return True
    except ValueError:
        return False


UNTRAINED = ("it reads weights the model's checkpoint does not hold, drawn at random when TransformerBridge "
             "loads it")
"""How ``untrained_hooks``' reasons begin: ``models.rows_refused`` says such hooks give no rows of the
model's trained weights (not that they are no vector per token)."""


HEADS = ("ForMaskedLM", "ForPreTraining", "ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
"""How the classes end whose checkpoints hold a language-model head (the masked-LM or the unembedding)."""


def untrained_hooks(bridge: Any, target: str) -> dict[str, str]:
    """hook -> why its rows are of no trained weights, for each hook of a head TransformerBridge gives a model
    whose checkpoint holds none: config.json names a class with no language-model head (``HEADS``) other
    than the one booted, or (naming none) its weights hold no tensor of the head, so the bridge's class draws
    the head's weights at random when it loads (its hooks' rows changed from load to load):

    * an encoder's masked-LM head: a bare ``BertModel`` (MiniLM's, mapped by its model_type), a
      sentence-transformers RoBERTa or XLM-R folder's (booted by ``masked_lm_for``), a fine-tuned
      ``BertForSequenceClassification``, booted as ``BertForMaskedLM`` / ``RobertaForMaskedLM``: its dense
      and LayerNorm (``ln_final.*``, ``mlm_head.hook_out``, ``unembed.*``, ``hook_unembed``);
    * a causal model's unembedding: a bare ``GPTNeoXModel`` or ``LlamaModel`` booted as its ``ForCausalLM``
      (``unembed.hook_out``, ``hook_unembed``; ``ln_final.*`` is the base model's, trained).

    A head whose weights are all tied to the base model's (GPT-2's and Qwen2's unembedding is the token
    embedding) is trained, and the head's input (``mlm_head.hook_in``, ``unembed.hook_in``) is the model's
    and stays. Empty for any other model, or when the model's config cannot be read here."""
    model, hf_cfg = bridge.original_model, _hf_config(target)
    arch, booted = (getattr(hf_cfg, "architectures", None) or [""])[0], type(model).__name__
    prefix = getattr(model, "base_model_prefix", "")
    if hf_cfg is None or arch == booted or arch.endswith(HEADS) or not hasattr(model, prefix):
        return {}
    base = {id(p) for p in getattr(model, prefix).parameters()}
    heads = [name for name, m in model.named_children()  # tied to the embedding: trained
             if name != prefix and any(id(p) not in base for p in m.parameters())]
    if not arch:  # config.json names no class: its weights say whether it saved the head
        saved = _as_loaded(model, saved_names(target))
        heads = [h for h in heads if saved is not None and not any(k.startswith(f"{h}.") for k in saved)]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}  # the modules' order
    path = {id(m): name for name, m in model.named_modules()}
    out = {}
    for head in heads:
        points = [(path[id(p)], h) for h, p in bridge.hook_dict.items() if id(p) in path
                  and path[id(p)].startswith(f"{head}.")]
        first = min((p for p, _ in points), key=order.__getitem__, default=None)  # the head's input
        named = arch or f"config.json names no class and its weights no {head}.*"
        if is_encoder(hf_cfg):
            said = (f"the masked-LM head it adds to this encoder ({named}, booted as {booted}); the "
                    "encoder's output is the last block's hook_resid_post (the head's input, "
                    "mlm_head.hook_in)")
        else:
            given = sorted((h for p, h in points if p == first), key=lambda h: ("." not in h, h))
            said = (f"the unembedding it adds to this model ({named}, booted as {booted}; not tied to the "
                    f"embedding); its input{', ' + given[0] if given else ''}, is the model's")
        out |= {h: f"{UNTRAINED}: {said}" for p, h in points if p != first}
    return out


def saved_names(target: str) -> list[str] | None:
    """The names of the tensors saved at ``target`` (a folder, or a hub model in the local cache), from its
    index or its safetensors header, or a ``pytorch_model.bin`` loaded onto the meta device (no weights
    read); None when none of them can be read here."""
    import json
    from pathlib import Path

    def find(name: str) -> Path | None:
        if Path(target).is_dir():
            return Path(target, name) if Path(target, name).is_file() else None
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(target, name)
        return Path(got) if isinstance(got, str) else None

    try:
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if p := find(index):
                return list(json.loads(p.read_text(encoding="utf-8"))["weight_map"])
        if p := find("model.safetensors"):
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                return list(f.keys())
        if p := find("pytorch_model.bin"):
            import torch

            return list(torch.load(p, map_location="meta", weights_only=True))
    except Exception:
        return None
    return None


def _as_loaded(model: Any, names: list[str] | None) -> list[str] | None:
    """``names`` as transformers renames a checkpoint's tensors when it loads them into ``model`` (Pythia's
    ``embed_out.weight`` is GPTNeoXForCausalLM's ``lm_head.weight``), where this transformers says how;
    then ``HEAD_ALIASES``, so that a head saved under its older name still counts as saved where this
    transformers has no such table (its own renames unknown here: a Pythia was refused as headless)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping

        renames = get_model_conversion_mapping(model)
    except Exception:  # another transformers: its renames unknown here, HEAD_ALIASES only
        renames = []
    if names is None:
        return None
    children = {name for name, _ in model.named_children()}
    out = []
    for name in names:
        for rename in renames:
            try:
                name = rename.rename_source_key(name)[0]
            except Exception:
                pass
        for old, new in HEAD_ALIASES.items():  # only to a head this model has, from a name it lacks
            if name.startswith(old) and old[:-1] not in children and new[:-1] in children:
                name = new + name[len(old):]
        out.append(name)
    return out


HEAD_ALIASES = {"embed_out.": "lm_head."}
"""A head's saved name -> the module a supported family's class loads it into, for the families whose names
differ (GPT-NeoX / Pythia checkpoints hold the unembedding as ``embed_out``, which transformers 5 loads
into ``lm_head``; an older transformers' GPTNeoXForCausalLM has ``embed_out`` itself, left as it is)."""
