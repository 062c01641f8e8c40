"""The dictionary protocol and the variant registry.

Every dictionary (SAE, VAE, VAEase, ...) is one ``nn.Module`` subclass of :class:`Dictionary` in its own
file under ``train/variants/``, registered with :func:`register`. The training loop and the analysis
only ever call the methods below, so a new variant never touches them.

What a variant provides, all in its own file:

* required: ``variant`` (its registered name), ``forward(x, sample)`` -> :class:`Forward`, ``decode(codes)``,
  ``loss_terms(x, out)`` (``"loss"`` the total), and ``active_side`` where its activity is a variance;
* optional class attributes, read by the stages: ``default_params`` (else the constructor's keyword
  defaults: ``param_defaults``), ``optional_params`` (params also accepted, with their meaning when not
  given, but stored only when given: the SAEs' deep-body keys; listed by ``actdict variants``),
  ``positive`` (params checked > 0), ``autocast_note`` (train warns under bf16 autocast),
  ``trains_reconstruction`` (False: x_hat is a by-product), ``batch_loss`` (batches of 2 rows or more);
* optional methods: ``after_step()`` (after each optimizer step), ``run_note(params, steps)`` (a line
  before a run too short for it), ``to_saelens()`` (the SAELens view ``actdict export`` writes; without it
  the variant is not exported).

Shapes: B = batch, d = input width, k = dictionary size (number of latents).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.rng import kept_rng


class Forward:
    """What one forward pass of a dictionary produces.

    ``codes`` and ``activity`` may be given as zero-argument callables: they are then computed on first
    read and kept (the TopK SAEs' dense [B, k] codes and their log, which training never reads). Readers
    always get tensors.
    """

    __slots__ = ("x_hat", "extras", "_codes", "_activity")

    x_hat: Tensor
    """[B, d] reconstruction."""
    extras: dict[str, Tensor]
    """Variant-specific tensors the loss needs (e.g. mu, var), never read by the loop. Optional key
    ``"dec_in"``: the decoder's input when it is not ``codes`` (a sampled forward of a VAE), so that
    ``x_hat == decode(extras["dec_in"])``; analysis edits it (masked-dimensions curve)."""

    def __init__(self, x_hat: Tensor, codes: Tensor | Callable[[], Tensor],
                 activity: Tensor | Callable[[], Tensor], extras: dict[str, Tensor]) -> None:
        self.x_hat, self.extras = x_hat, extras
        self._codes = codes if isinstance(codes, Tensor) else _Memo(codes)
        self._activity = activity if isinstance(activity, Tensor) else _Memo(activity)

    @property
    def codes(self) -> Tensor:
        """[B, k] feature activations shown in analysis (SAE: z; VAE: mu; VAEase: (1 - sigma) * mu)."""
        return self._codes if isinstance(self._codes, Tensor) else self._codes()

    @property
    def activity(self) -> Tensor:
        """[B, k] the per-latent score that the Otsu split uses to count active dimensions."""
        return self._activity if isinstance(self._activity, Tensor) else self._activity()

    def float(self) -> Forward:
        """The same forward with every floating tensor in float32 (a no-op outside autocast): the loss is
        computed on these, so reductions and logs run in float32 while matmuls stay in bf16 under autocast."""
        f32 = lambda t: t.float() if isinstance(t, Tensor) and t.is_floating_point() else t  # noqa: E731
        codes, activity = self._codes, self._activity
        return Forward(f32(self.x_hat), f32(codes) if isinstance(codes, Tensor) else (lambda: f32(codes())),
                       f32(activity) if isinstance(activity, Tensor) else (lambda: f32(activity())),
                       {k: f32(v) for k, v in self.extras.items()})

    def replace(self, **changes: Any) -> Forward:
        """A copy with some fields changed; codes / activity not yet computed stay lazy (and shared)."""
        new = Forward(self.x_hat, self._codes, self._activity, self.extras)
        for name, value in changes.items():
            if name in ("codes", "activity"):
                value = value if isinstance(value, Tensor) else _Memo(value)
                name = "_" + name
            elif name not in ("x_hat", "extras"):
                raise TypeError(f"Forward has no field {name!r}")
            setattr(new, name, value)
        return new


class _Memo:
    """A zero-argument callable evaluated once (later calls return the kept value)."""

    __slots__ = ("fn", "value")

    def __init__(self, fn: Callable[[], Tensor]) -> None:
        self.fn: Callable[[], Tensor] | None = fn
        self.value: Tensor | None = None

    def __call__(self) -> Tensor:
        if self.fn is not None:
            self.value, self.fn = self.fn(), None
        return self.value  # type: ignore[return-value]


class Dictionary(nn.Module):
    """Base class of every variant.

    ``active_side`` says which side of the Otsu split of ``Forward.activity`` is active:
    ``"low"`` for VAE models (activity = log posterior variance: small variance = active),
    ``"high"`` for SAE models (activity = log|z|: large magnitude = active).

    Inputs: calling the model casts a floating ``x`` to the parameters' dtype (a float16
    store row works as it is; autocast still runs the matmuls in bf16). Gradients: a variant may take a
    faster path in training (the sparse and fused steps of the SAEs), whose codes carry no graph and which
    does not differentiate ``x``; in eval mode (as ``checkpoint.load`` returns a model), when ``x`` requires
    grad (``wants_input_grad``: attribution, a dictionary spliced into a model's backward), every variant
    runs its plain autograd composition, so gradients reach ``x`` and ``Forward.codes``.
    """

    variant: ClassVar[str] = ""
    active_side: ClassVar[Literal["low", "high"]] = "high"
    autocast_note: ClassVar[str] = ""  # why bf16 autocast hurts this variant's training ('' = it does not)
    positive: ClassVar[tuple[str, ...]] = ()  # params that must be > 0 (``check_params``)
    trains_reconstruction: ClassVar[bool] = True  # False: x_hat is a by-product, not trained (``lse``)
    batch_loss: ClassVar[bool] = False  # True: the loss uses statistics across the batch's rows (``lse``'s
    # variance and covariance, ``sae_topk_auxk``'s spread), so a batch needs 2 rows or more

    def __init__(self, d: int, k: int, **params: Any) -> None:
        super().__init__()
        self.d, self.k, self.params = d, k, dict(params)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, Tensor) and x.is_floating_point():  # to the parameters' dtype (~3 us a call)
            p = next(self.parameters(), None)
            if p is not None and p.dtype != x.dtype:
                x = x.to(p.dtype)
                args, kwargs = ((x, *args[1:]), kwargs) if args else (args, kwargs | {"x": x})
        return super().__call__(*args, **kwargs)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]
        """Encode and decode ``x``; ``sample=False`` gives the deterministic (posterior-mean) path."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:  # codes: [B, k] -> x_hat [B, d]
        """The decoder alone: ``decode(forward(x, sample=False).codes) == forward(x, sample=False).x_hat``.
        Analysis uses it to decode edited codes (e.g. the masked-dimensions RE curve)."""
        raise NotImplementedError

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        """Scalar loss terms (batch means); key ``"loss"`` is the total that is minimised."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook run after each optimizer step (e.g. decoder renormalisation). Default: nothing."""

    @classmethod
    def run_note(cls, params: dict[str, Any], steps: int) -> str | None:
        """What training prints before a run of ``steps`` optimizer steps of this variant with ``params``
        (as given, without the defaults) when that length leaves something short (BatchTopK's inference
        threshold); None: nothing to say. Default: None."""
        return None


def wants_input_grad(x: Tensor) -> bool:
    """The forward must differentiate ``x`` (and give codes with a graph): grad mode is on and x requires
    grad. Fast training paths are taken only otherwise."""
    return torch.is_grad_enabled() and x.requires_grad


_COEFFICIENTS = ("alpha", "beta", "aux_penalty", "auxk_coef")  # loss weights not named lam*


def is_loss_weight(name: str) -> bool:
    """A variant param that weighs a loss term: ``lam*`` (not ``lam_warmup_steps``) and ``_COEFFICIENTS``."""
    return name.startswith("lam") and not name.endswith("_steps") or name in _COEFFICIENTS


def check_coefficients(variant: str, params: dict[str, Any]) -> None:
    """Every loss weight (``lam*``, ``alpha``, ``beta``, ...) is a finite number >= 0: a negative one would
    reward what it penalises, and a string would only fail at the first loss."""
    for name, value in params.items():
        if not is_loss_weight(name):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ConfigError(f"{variant}: {name} is a loss weight and must be a finite number >= 0, "
                              f"got {value!r}")


def param_defaults(cls: type[Dictionary]) -> dict[str, Any]:
    """A variant's params and their defaults: its ``default_params``, or else its constructor's keyword
    defaults (the VAEs', ``sae_kl``'s)."""
    if hasattr(cls, "default_params"):
        return cls.default_params
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def known_params(cls: type[Dictionary]) -> set[str] | None:
    """The params a config may give a variant: its ``default_params`` and ``optional_params``, or else its
    constructor's keywords; None when it declares none and takes any (``**params``: its own check)."""
    if hasattr(cls, "default_params"):
        return set(cls.default_params) | set(getattr(cls, "optional_params", {}))
    names = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in names.values()):
        return None
    return set(names) - {"self", "d", "k"}


def check_params(cls: type[Dictionary], params: dict[str, Any]) -> None:
    """Each given param is one the variant knows (``known_params``); each it has a default for
    (``param_defaults``) has its default's kind (an integer for an integer, not 8.7, "8" or true; a finite
    number for a float; a list for a list or tuple, whose items are the variant's to check), those in
    ``positive`` are > 0, and counts of steps (``*_steps``) >= 0."""
    known = known_params(cls)
    if known is not None and (unknown := sorted(set(params) - known)):
        raise ConfigError(f"{cls.variant}: unknown params {unknown}; valid: {sorted(known)}")
    defaults = param_defaults(cls)
    for name, value in params.items():
        listed = isinstance(defaults.get(name), list | tuple)
        if listed and not isinstance(value, list | tuple):
            raise ConfigError(f"{cls.variant}: {name} must be a list, got {value!r}")
        if name not in defaults or isinstance(defaults[name], bool | str | list | tuple | dict):
            continue
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if isinstance(defaults[name], int) and not (number and float(value).is_integer()):
            raise ConfigError(f"{cls.variant}: {name} must be an integer, got {value!r}")
        if not (number and math.isfinite(value)):
            raise ConfigError(f"{cls.variant}: {name} must be a finite number, got {value!r}")
        if name in cls.positive and not value > 0:
            raise ConfigError(f"{cls.variant}: {name} must be > 0, got {value!r}")
        if name.endswith("_steps") and value < 0:  # a count of steps (sae_l1_decnorm's lam_warmup_steps)
            raise ConfigError(f"{cls.variant}: {name} counts steps and must be >= 0, got {value!r}")


def as_defaults_kind(cls: type[Dictionary], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (checked) with an integer param given as a whole float (8.0, which ``check_params`` takes
    for 8) made an int: a constructor gets its default's kind (a plugin's torch.randn(n, k, d), range(n))."""
    defaults = param_defaults(cls)
    whole = lambda n, v: isinstance(v, float) and type(defaults.get(n)) is int  # noqa: E731
    return {n: int(v) if whole(n, v) else v for n, v in params.items()}


_REGISTRY: dict[str, type[Dictionary]] = {}


def register(cls: type[Dictionary]) -> type[Dictionary]:
    """Class decorator: make a variant constructible by its ``variant`` name."""
    if not cls.variant:
        raise ValueError(f"{cls.__name__} has no variant name")
    params = set(param_defaults(cls)) | set(getattr(cls, "optional_params", {}))
    if not isinstance(cls.positive, tuple | list) or not set(cls.positive) <= params:
        raise ValueError(f"variant {cls.variant!r}: positive must be a tuple of its params' names "
                         f"{sorted(params)}, got {cls.positive!r}")
    if cls.variant in _REGISTRY and _REGISTRY[cls.variant] is not cls:
        raise ValueError(f"variant {cls.variant!r} registered twice ({_REGISTRY[cls.variant].__module__} "
                         f"and {cls.__module__})")
    _REGISTRY[cls.variant] = cls
    return cls


def registry() -> dict[str, type[Dictionary]]:
    """All registered variants, by name: actdict's own (importing the variants package registers them),
    then those of installed plugins (``train.plugins``: entry points of group ``actdict.variants``)."""
    import actdict.train.variants  # noqa: F401  (registers every variant)
    from actdict.train import plugins

    plugins.load(_REGISTRY)
    return dict(_REGISTRY)


def plugin_hint() -> str:
    """What an unknown variant's error adds: the plugins left out and why (a variant of another package
    needs that package installed, with its entry point; docs/variants.md)."""
    from actdict.train import plugins

    failed = plugins.failures()
    said = "; ".join(f"{k}: {v}" for k, v in failed.items())
    return f"; variant plugins left out: {said}" if failed else ""


def make(variant: str, d: int, k: int, seed: int = 0, **params: Any) -> Dictionary:
    """Build a registered variant with a seeded initialisation. The seeding is the build's own: every
    generator ``torch.manual_seed`` touches (the CPU's, CUDA's, MPS') is given back after (``kept_rng``), as
    ``checkpoint.load`` in a notebook must leave the caller's next CUDA draw its own."""
    classes = registry()
    if variant not in classes:
        raise ConfigError(f"unknown dictionary variant {variant!r}; registered: {sorted(classes)} (a variant "
                          "of another package needs that package installed: docs/variants.md, 'Your own "
                          f"variant'){plugin_hint()}")
    check_coefficients(variant, params)  # as given (a variant may convert them before its base sees them)
    check_params(classes[variant], params)
    params = as_defaults_kind(classes[variant], params)
    with kept_rng():
        torch.manual_seed(seed)
        try:
            return classes[variant](d, k, **params)
        except ConfigError:
            raise
        except (TypeError, ValueError, RuntimeError) as e:
            said = str(e).splitlines()[0][:240]
            if any(s in said.lower() for s in ("allocate", "overflow")):  # k beyond memory or torch's sizes
                raise ConfigError(f"{variant}: a dictionary of k={k} latents is too large to build here "
                                  f"(torch: {said})") from e
            if isinstance(e, RuntimeError):
                raise
            raise ConfigError(f"{variant}: bad params {params}: {said}") from e  # a param's type or value


def make_meta(variant: str, d: int, k: int, **params: Any) -> Dictionary | None:
    """``make`` on the meta device (no memory, no values: the checks of a config and of a checkpoint's
    shapes); None when the variant's constructor cannot run there (a plugin's that reads a tensor's value:
    ``.item()``, ``float(t)``, numpy), so that the caller builds it for real instead. Config errors raise."""
    try:
        with torch.device("meta"):
            return make(variant, d, k, **params)
    except (ConfigError, RuntimeError, TypeError, NotImplementedError) as e:
        said = str(e.__cause__ if isinstance(e, ConfigError) and e.__cause__ else e).lower()
        if not any(s in said for s in ("meta tensor", "meta device", "'meta' backend")):
            raise
        return None
