"""Which dictionaries' optional sums of the analysis pass fit their memory: the co-activation counts
(``cofire_within``, ``analyze.cofire_max_mib``) and the class features' per-class sums
(``class_features_within``, ``CLASS_FEATURES_MAX_MIB``) and their AUROC bins (``class_auroc_within``,
``CLASS_AUROC_MAX_MIB``), smallest k first; a note names the others."""

from __future__ import annotations

import numpy as np

from actdict.analyze.auroc import STORED
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.streaming import count_dtype
from actdict.errors import one_line
from actdict.train.resume import listed


def cofire_within(models: dict, cfg: AnalyzeConfig, rows: int = 0) -> set[str]:
    """The dictionaries whose co-activations are counted (``analyze.cofire`` > 0): smallest k first, as many
    as ``analyze.cofire_max_mib`` holds (k^2 int32 each, int64 past 2^31 - 1 ``rows``: ``cofire.CoFire``); a
    note names the others."""
    if cfg.cofire < 1:
        return set()
    size = count_dtype(rows).itemsize
    counted = within_budget(models, lambda k: k ** 2 * size, cfg.cofire_max_mib)
    if left := sorted(set(models) - counted):
        print(one_line(f"analyze: note: no fires_with for {listed(left)}: their co-activation counts "
                       f"(k^2 x {size} bytes each) would pass analyze.cofire_max_mib={cfg.cofire_max_mib}"))
    return counted


CLASS_FEATURES_MAX_MIB = 2048
"""Memory for the class features' sums and shifts of all analysed dictionaries together (classes x k x 32
bytes each)."""


def class_features_within(models: dict, n_classes: int, cfg: AnalyzeConfig) -> set[str]:
    """The dictionaries whose class features are found (``analyze.labels`` and ``analyze.class_features``
    > 0): smallest k first, as many as ``CLASS_FEATURES_MAX_MIB`` holds; a note names the others."""
    if cfg.class_features < 1 or n_classes < 2:  # one class: no other rows to separate it from
        return set()
    chosen = within_budget(models, lambda k: n_classes * k * 32, CLASS_FEATURES_MAX_MIB)
    if left := sorted(set(models) - chosen):
        print(one_line(f"analyze: note: no class_features for {listed(left)}: their per-class sums "
                       f"({n_classes:,} classes x k x 32 bytes each) would pass "
                       f"{CLASS_FEATURES_MAX_MIB:,} MiB"))
    return chosen


CLASS_AUROC_MAX_MIB = 512
"""Memory for the class features' AUROC bins of all analysed dictionaries together (classes x k x
``auroc.STORED`` counts each: int32, or int64 where a class has 2^31 labelled rows or more)."""


def class_auroc_within(models: dict, n_classes: int, most_rows: int = 0) -> set[str]:
    """Of the dictionaries whose class features are found, those whose AUROC bins are counted: smallest k
    first, as many as ``CLASS_AUROC_MAX_MIB`` holds (their counts' dtype for ``most_rows``, the largest
    class's labelled rows: ``streaming.count_dtype``); a note names the others (their d alone)."""
    size = count_dtype(most_rows).itemsize * STORED  # bytes per class and latent
    chosen = within_budget(models, lambda k: n_classes * k * size, CLASS_AUROC_MAX_MIB)
    if left := sorted(set(models) - chosen):
        print(one_line(f"analyze: note: no class_features AUROC for {listed(left)}: their bins of |z| "
                       f"({n_classes:,} classes x k x {size} bytes each) would pass "
                       f"{CLASS_AUROC_MAX_MIB:,} MiB"))
    return chosen


def largest_class(labels: np.ndarray | None) -> int:
    """The most rows of one class among ``labels`` [n] (class indices, -1: none), 0 without labels."""
    return 0 if labels is None else int(np.bincount(labels[labels >= 0]).max(initial=0))


def within_budget(models: dict, need, mib: int) -> set[str]:
    """The dictionaries whose ``need(k)`` bytes fit ``mib`` MiB together, taken smallest k first."""
    budget, chosen = mib * 2**20, set()
    for name in sorted(models, key=lambda n: (models[n].k, n)):
        if (b := need(models[name].k)) <= budget:
            chosen.add(name)
            budget -= b
    return chosen
