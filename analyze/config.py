"""Config of the ``analyze`` stage (the ``analyze:`` section of an experiment YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actdict.config import ConfigError

MAX_CONTEXT = 512  # tokens each side: a window of 1,025, more than a page; 10**9 ended in a MemoryError
MAX_DENSITY_BINS = 10_000


@dataclass(frozen=True)
class AnalyzeConfig:
    """What to evaluate and what to show in the report."""

    dicts: list[str] = field(default_factory=list)
    """Dictionary names (folders of ``<run_dir>/dicts``) to analyze; empty means every one found there."""
    n_features: int = 20
    """Features listed with their top contexts in summary.json, per dictionary: the most frequently active
    ones (the report's feature pages cover every feature)."""
    top_k: int = 10
    """Top-activating (and most negative) test rows kept per feature, for every feature."""
    context: int = 8
    """Tokens of context shown on each side of a top-activating token (never crossing its document)."""
    batch_size: int = 4096
    """Rows per forward pass during evaluation, filled across test chunks (the first batch is the paper's
    "first test batch" of RE 1-sample); memory grows with it ([batch_size, k] codes per dictionary)."""
    max_test_rows: int | None = None
    """Evaluate on at most this many test rows (in test-chunk order); null means the whole test split."""
    density_bins: int = 40
    """Bins of the log10 feature-density histogram."""
    quantiles: int = 5
    """Activation quantiles of the sampled contexts shown per feature (equal-count groups of a uniform
    sample of the rows where the feature is active)."""
    quantile_samples: int = 4
    """Sampled contexts per quantile and feature (the sample holds quantiles x quantile_samples rows)."""
    dense_threshold: float = 0.1
    """A latent active on more than this fraction of the test rows counts as dense."""
    labels: str = ""
    """Optional .npy file with one label per store row (e.g. the manifold of synthetic data): AD is then
    also reported per class (mean per-row AD, and the paper's Table 2 split of the class-mean activity).
    Rows whose label is missing (NaN, an empty string) are left out of it and counted apart. At most 10,000
    distinct labels (``analyze.inputs.MAX_CLASSES``): a per-row value (an id, a continuous target) is
    refused."""
    labels_field: str = ""
    """Instead of ``labels``: a field of the harvest's source documents whose value labels every row of
    the document (a jsonl key, a parquet column, a hub dataset's field; dotted when nested:
    ``meta.pile_set_name`` of the Pile; ``collection`` of the demo corpus, austen, bible, ..., or its
    ``source``, work and part: austen:prideprejudice:23). Read again from the source up to the last document
    the rows need; a token store's rows (tokens) take their document's value, an embeddings store's theirs."""
    class_features: int = 5
    """With ``labels``: features listed per class, those whose code most separates the class's rows from the
    other labelled rows (Cohen's d of |z|, ``metrics.class_separation``), with their mean |z| and firing
    rate in and out of the class; and as many classes per feature, those with the most of its active rows
    (``by_class`` of its feature page, ``metrics.class_profile``); 0 = off. Costs 32 bytes per class and
    latent of each dictionary while the pass runs (and 648 more for the AUROC's bins, 1,296 past 2^31 rows
    of a class, ``analyze.budget.CLASS_AUROC_MAX_MIB``) (at most ``analyze.budget.CLASS_FEATURES_MAX_MIB``
    for all: a note names those left out)."""
    texts: str = ""
    """Optional file of one text per store row, in row order (.parquet with a ``text`` column, .jsonl, .txt,
    .npy of strings; ``analyze/textfile.py``): the report and features files show each shown row's text, as
    for an embeddings harvest. For a store of your own vectors (an embeddings harvest's texts are read
    again from its source without it)."""
    texts_column: str = ""
    """The texts' column of a .parquet ``texts`` file, or their key in a .jsonl file's objects; empty: a
    column named ``text``, or the file's only string column (a .jsonl object's ``text``)."""
    mask_curve_points: int = 40
    """Points of the masked-dimensions RE curve (paper Fig. 4), geometrically spaced in 1..k, plus 0."""
    mask_curve_rows: int = 2048
    """Rows of the first test batch used for the masked-dimensions curve (the paper: one batch of 2048)."""
    mask_curve_sample: bool = True
    """Mask one stochastic forward's decoder input (the official code's protocol; VAE models sample
    z = mu + sigma * eps) rather than the deterministic codes. SAEs are deterministic either way."""
    ce_loss: bool = False
    """Splice each dictionary into the (causal) language model of the store and report CE-loss recovered
    and KL on held-out test-split windows. Needs the model offline; not for encoders (e.g. MiniLM)."""
    ce_windows: int = 16
    """Held-out windows for the CE/KL evaluation."""
    ce_ctx: int = 128
    """Tokens per held-out window (a BOS token is prepended when the store's harvest prepended one)."""
    ce_batch_size: int = 4
    """Windows per language-model forward pass in the CE/KL evaluation."""
    shared_directions: bool = True
    """Compare the decoder directions of every ordered pair of the analysed dictionaries (``analyze.compare``:
    MMCS, each feature's nearest feature in the others), and each one's with its snapshots'
    (``train.snapshot_every``: ``formation``). One k_A x k_B x d product per pair: 8 s for two
    dictionaries of 16,384 at d = 512 on one CPU core, 90 pairs for a sweep of 10; false skips them."""
    logit_effects: int = 0
    """Tokens per feature whose next-token logits its decoder direction raises most, and as many it lowers
    most, read through the store's (causal) language model's final norm and unembedding: the direct path
    of a residual-stream hook (``analyze.logits``). 0 = off. Needs the model offline, as ``ce_loss``."""
    cofire: int = 8
    """Features listed per feature as firing on the same rows (Jaccard similarity of their active rows,
    ``analyze/cofire.py``), from exact counts of every pair over the test rows; 0 = off."""
    cofire_max_mib: int = 2048
    """Memory for the co-activation counts of all analysed dictionaries together: k^2 x 4 bytes each (256
    MiB at k 8,192, 1 GiB at 16,384, 4 GiB at 32,768; 8 bytes past 2^31 - 1 rows); the dictionaries that
    would pass it, largest first, list no ``fires_with`` (a note names them)."""
    device: str = "auto"
    """Torch device for evaluation: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda:1``..."""

    def __post_init__(self) -> None:
        for name in ("n_features", "top_k", "batch_size", "density_bins", "quantiles", "quantile_samples",
                     "mask_curve_points", "mask_curve_rows", "ce_windows", "ce_ctx", "ce_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"analyze.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("logit_effects", "cofire", "cofire_max_mib", "class_features"):
            if getattr(self, name) < 0:
                raise ConfigError(f"analyze.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.context <= MAX_CONTEXT:  # every feature's top rows keep 2 * context + 1 token ids
            raise ConfigError(f"analyze.context must be in [0, {MAX_CONTEXT}] (tokens on each side of a top "
                              f"token), got {self.context}")
        if self.density_bins > MAX_DENSITY_BINS:  # 10**9 filled the memory
            raise ConfigError(f"analyze.density_bins must be at most {MAX_DENSITY_BINS:,}, got "
                              f"{self.density_bins:,}")
        if self.max_test_rows is not None and self.max_test_rows < 1:
            raise ConfigError(f"analyze.max_test_rows must be >= 1 or null, got {self.max_test_rows}")
        if self.labels and self.labels_field:
            raise ConfigError(f"analyze.labels ({self.labels!r}) and analyze.labels_field "
                              f"({self.labels_field!r}) are both set: the rows' labels come from a .npy file "
                              "or from a field of the harvest's source, not both (to use the file, empty the "
                              "field: analyze.labels_field= on the command line)")
        if not 0.0 <= self.dense_threshold <= 1.0:
            raise ConfigError(f"analyze.dense_threshold must be in [0, 1], got {self.dense_threshold}")
