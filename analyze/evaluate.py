"""Streaming evaluation of one dictionary over the test rows (the accumulators behind summary.json).

:class:`ModelEval` is fed every test batch once; it keeps sums and counts, none per row (RE, cosine, L0,
how many rows have each AD, fire counts, per-class sums of |z| or log var and of AD, and for the class
features per-class sums of |z| (less a shift), its square and fires, and counts of |z| in fixed bins for their
AUROC: ``auroc.ClassBins``), the paper-protocol
figures of the first test batch (one stochastic RE, the masked-dimensions curve) and a
:class:`~actdict.analyze.toptokens.FeatureTracker` for all features.
:meth:`ModelEval.summary` turns them into the model's summary.json entry (metrics from ``metrics.py``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from actdict.analyze import metrics as M
from actdict.analyze.auroc import ClassBins
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.streaming import nonzero_count, row_counts, where_true
from actdict.analyze.toptokens import FeatureTracker
from actdict.errors import ActdictWarning

CLASS_SLICE = 1 << 22
"""Codes per slice of rows that ``ModelEval`` adds to the per-class sums at once (the AD statistic's and the
class features' float64 and int64 temporaries: 64 MiB)."""
SPARSE_DENSITY = 0.1
"""Largest share of nonzero codes in a batch for which ``ModelEval`` sums exp(activity) per class over the
finite entries alone (their exp; the others add exp(-inf) = 0, so the sums are the same bits): measured at B
4,096, k 16,384, one thread, the sparse sum takes 0.24 s at AD 32 against 0.61 s sliced dense, even at 0.05
of the codes, 0.89 against 0.69 at 0.2."""


def mask_counts(mask: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, k] bool -> (set entries of each row [B] int64: ``streaming.row_counts``, of each column [k]
    int32). On a CPU the columns by numpy's int32 sum, which converts a few thousand bytes at a time:
    torch's sum with dtype int32 converts the whole mask first (a fresh [B, k] int32, ~0.2 s of page
    faults at [4096, 16384] on its own). ``pairs``: ``where_true(mask)`` if the caller has it; on a CPU, where
    at most 1 in 16 entries is set, both are bincounts of its rows and columns (the same integers without
    reading the mask: 0.5 against 38 ms at [4096, 16384] with 32 a row, 0.3 against 9 at k 4,096)."""
    if mask.device.type != "cpu":
        ones = mask.view(torch.uint8)  # [B, k] summed as bytes into int32: ~2x a bool sum's speed (int64)
        return ones.sum(1, dtype=torch.int32).long(), ones.sum(0, dtype=torch.int32)
    if pairs is not None and mask.ndim == 2 and len(pairs[0]) * 16 <= mask.numel():
        return row_counts(mask, pairs), torch.bincount(pairs[1], minlength=mask.shape[1]).to(torch.int32)
    return row_counts(mask), torch.from_numpy(mask.numpy().sum(0, dtype=np.int32))


class ModelEval:
    """Accumulators of one dictionary over the evaluated rows."""

    def __init__(self, model, cfg: AnalyzeConfig, seed: int, device: torch.device, n_classes: int = 0,
                 cofire: bool = False, class_features: bool = False, class_auroc: bool = False,
                 most_rows: int = 0):
        self.model, self.seed, self.cfg = model.to(device).eval(), seed, cfg
        self.sse, self.cos_sum, self.l0_sum = 0.0, 0.0, 0
        self.re_sample: float | None = None
        self.curve: dict | None = None
        self.ad = torch.zeros(model.k + 1, dtype=torch.long, device=device)  # [k + 1] rows of each AD
        self.fire = torch.zeros(model.k, dtype=torch.long, device=device)  # [k]
        self.class_act = torch.zeros(n_classes, model.k, dtype=torch.float64, device=device)  # [C, k]
        self.class_n = torch.zeros(n_classes, dtype=torch.long, device=device)  # [C]
        self.class_ad = torch.zeros(n_classes, dtype=torch.long, device=device)  # [C] sum of AD
        c = n_classes if class_features and cfg.class_features else 0  # what class_separation reads
        self.class_z = torch.zeros(c, model.k, dtype=torch.float64, device=device)  # [C, k] sum of |z|-shift
        self.class_z2 = torch.zeros(c, model.k, dtype=torch.float64, device=device)  # [C, k] of its square
        self.class_fire = torch.zeros(c, model.k, dtype=torch.long, device=device)  # [C, k] rows active
        self.class_shift = torch.zeros(c, model.k, dtype=torch.float64, device=device)  # [C, k] each class's
        # mean |z| on its first labelled rows: sums of |z| - shift, whose variance keeps its digits where the
        # mean is large (class_separation)
        self.class_shifted = torch.zeros(c, dtype=torch.bool, device=device)  # [C] its shift taken
        self.class_bins = (ClassBins(c, model.k, device, most_rows) if c and class_auroc  # counts [C, bins,
                           else None)  # k]; most_rows: the largest class's labelled rows (their dtype)
        samples = cfg.quantiles * cfg.quantile_samples
        self.tracker = FeatureTracker(model.k, cfg.top_k, samples, seed, device, cofire=cofire)

    @torch.no_grad()
    def update(self, x: torch.Tensor, rows: torch.Tensor, cls: torch.Tensor | None = None) -> None:
        """x [B, d] float32, rows [B] global store rows, cls [B] class index of each row, -1 for a row
        without a label (or None)."""
        m = self.model
        out = m(x, sample=False)
        if self.re_sample is None:  # paper protocol: one stochastic sample on the first test batch
            torch.manual_seed(self.seed)
            self.re_sample = M.reconstruction_error(x, m(x, sample=True).x_hat)
            self.curve = self._masked_curve(x[: self.cfg.mask_curve_rows])
        self.sse += float(M.sq_err(x, out.x_hat).sum())
        self.cos_sum += float(M.cosine_similarity(x, out.x_hat).sum())
        nonzero = nonzero_count(out.codes)  # numpy's count on a CPU: ~9x torch's on half-set codes
        self.l0_sum += nonzero
        mask, exact = M.active_split(out.activity, m.active_side)  # [B, k]; exact: no row split
        pairs = where_true(mask)  # [m] each: its set entries, row-major, for every reader of them
        ad, fire = mask_counts(mask, pairs)  # [B], [k]
        self.ad += torch.bincount(ad, minlength=len(self.ad))
        self.fire += fire
        if cls is not None and len(self.class_n):  # class -1: no label, counted in no class
            has = cls >= 0  # [B]
            lab = cls[has]  # [B'] the labelled rows' classes
            self.class_n += torch.bincount(lab, minlength=len(self.class_n))
            self.class_ad.index_add_(0, lab, ad[has])
            finite = pairs if exact and m.active_side == "high" else None  # the activity's finite entries
            self._add_class_sums(out, mask, cls, bool(has.all()), nonzero, pairs, finite)
        self.tracker.update(out.codes, mask, rows, pairs, nonzero)

    def _add_class_sums(self, out, mask: torch.Tensor, cls: torch.Tensor, labelled: bool,
                        nonzero: int, pairs: tuple[torch.Tensor, torch.Tensor],
                        finite: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """The per-class sums of the labelled rows, a slice of rows at a time: the statistic of each class's
        AD (``_class_stat``) and, where kept, the class features' (``_add_class_features``); mask [B, k], cls
        [B] the rows' classes (-1: no label); labelled: whether every row has one; nonzero: the batch's
        nonzero codes; pairs: ``where_true(mask)``; finite: the activity's entries above -inf where the
        caller knows them (the mask, when no row was split), else None. A whole batch's temporaries were 16
        bytes per code for the statistic (its float64 copy and exp, then the labelled rows') and 16 for the
        class features (float64 |z| and int64 fires): 4 GiB each at B 4,096, k 65,536, beside the codes
        themselves. No labelled rows' copy when every row is labelled. Sparse codes (``SPARSE_DENSITY``) sum
        an SAE's statistic over the finite entries alone, and a mask of at most 1 in 16 set adds the fires
        from its set entries alone (the same sums to the bit: the others add 0; fires are integers). The
        AUROC's bins (``ClassBins``) count the nonzero codes: those entries alone when at most 1 in 16 is
        nonzero (the mask's pairs when they are those codes, as an SAE's), else a slice of rows at a time."""
        codes, act, k = out.codes, out.activity, out.codes.shape[1]
        density = nonzero / max(1, codes.numel())
        bin_rows = self.class_bins is not None and not self._bin_entries(codes, cls, nonzero, finite)
        sparse_stat = self.model.active_side == "high" and density <= SPARSE_DENSITY
        sparse_fire = bool(len(self.class_z)) and len(pairs[0]) * 16 <= mask.numel()
        if sparse_stat:  # |z| = exp(log|z|) of the finite entries, in row order
            b, f = where_true(act > -torch.inf) if finite is None else finite  # [m] row-major
            self._add_flat(self.class_act, cls[b], f, act[b, f].to(torch.float64).exp_(), labelled)
        if sparse_fire:
            b, f = pairs
            self._add_flat(self.class_fire, cls[b], f, torch.ones_like(b), labelled)
        step = max(1, CLASS_SLICE // max(1, k))  # rows per slice
        for a in range(0, len(codes), step):
            lab, part, has = cls[a:a + step], slice(a, a + step), None  # [b]
            if not labelled:
                has = lab >= 0
                if not bool(has.any()):
                    continue
                lab = lab[has]  # [b'] classes

            def rows(t: torch.Tensor, part=part, has=has) -> torch.Tensor:  # the slice's labelled rows
                return t[part] if has is None else t[part][has]

            if not sparse_stat:
                self.class_act.index_add_(0, lab, self._class_stat(rows(act)))
            if len(self.class_z):
                self._add_class_features(rows(codes), None if sparse_fire else rows(mask), lab)
            if bin_rows:
                self.class_bins.add_rows(rows(codes), lab)

    def _bin_entries(self, codes: torch.Tensor, cls: torch.Tensor, nonzero: int,
                     finite: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
        """Counts the AUROC's bins from the nonzero codes' entries alone, when at most 1 in 16 is nonzero:
        ``finite`` (the mask's pairs, an SAE's |z| > 0) when they are as many, else found; False (nothing
        counted) for denser codes, which ``_add_class_sums`` counts a slice of rows at a time."""
        if nonzero * 16 > codes.numel():
            return False
        b, f = finite if finite is not None and len(finite[0]) == nonzero else where_true(codes != 0)  # [m]
        self.class_bins.add_entries(cls[b], f, codes[b, f])
        return True

    @staticmethod
    def _add_flat(sums: torch.Tensor, lab: torch.Tensor, f: torch.Tensor, v: torch.Tensor, labelled: bool
                  ) -> None:
        """sums [C, k] += v [m] at (lab, f) [m], in the entries' order; entries of class -1 left out."""
        if not labelled:
            keep = lab >= 0
            lab, f, v = lab[keep], f[keep], v[keep]
        sums.view(-1).index_add_(0, lab * sums.shape[1] + f, v.to(sums.dtype))

    def _add_class_features(self, codes: torch.Tensor, mask: torch.Tensor | None, lab: torch.Tensor) -> None:
        """The class features' sums of a slice's labelled rows: codes, mask [b', k] (None: fires added
        elsewhere), lab [b'] their classes; each class's shift is its mean |z| on the first slice with its
        rows (one shift [k] for all, the first slice's, was far from the mean of a class unlike that slice:
        a code 0 there and 3,000 +- 0.002 on another class lost its variance to rounding). A class at a time
        (its rows gathered in their order, its shift broadcast, not gathered per row; |z| - shift of the
        float32 |z| straight into float64): the same sums to the bit as adding every row into its class's
        row at once (each (class, latent) sum takes its rows' terms one by one in row order either way),
        10 against 62 ms a slice of b' 256, k 16,384, 17 classes in fresh memory (no [b', k] float64 copy,
        abs or gathered shift; each class's row stays in cache); a whole batch's update (B 4,096, one CPU
        thread, the pass's reused memory) 2.01 -> 1.79 s at k 16,384, TopK SAE."""
        order = torch.argsort(lab, stable=True)  # [b'] the rows by class, each class's in row order
        counts = torch.bincount(lab, minlength=len(self.class_shifted)).tolist()  # [C]
        z = codes.index_select(0, order).abs_()  # [b', k] |z| in the codes' dtype (exact), by class
        fires = None if mask is None else mask.index_select(0, order)  # [b', k]
        shifted, start = self.class_shifted.tolist(), 0  # [C] on the host: one read, not one per class
        for c, n in enumerate(counts):
            if not n:
                continue
            part, start = slice(start, start + n), start + n
            first = torch.zeros(n, dtype=torch.long, device=z.device)  # [n] every row into the class's row
            row = slice(c, c + 1)
            if not shifted[c]:  # the class's first rows: their mean is its shift
                sums = torch.zeros_like(self.class_shift[row]).index_add_(0, first, z[part].to(torch.float64))
                self.class_shift[c] = sums[0] / n
                self.class_shifted[c] = True
            t = torch.sub(z[part], self.class_shift[c])  # [n, k] float64 |z| less the class's shift
            self.class_z[row].index_add_(0, first, t)
            self.class_z2[row].index_add_(0, first, t.square_())
            if fires is not None:
                self.class_fire[c] += fires[part].sum(0)  # integers: any order

    def class_profile(self) -> list[list[tuple[int, int, float]]]:
        """Per feature, the classes with the most of its active rows (``metrics.class_profile``; as many as
        ``analyze.class_features``); [] where the class features' sums were not kept."""
        if not len(self.class_z):
            return []
        return M.class_profile(self.class_fire.cpu(), self.class_z.cpu(), self.class_n.cpu(),
                               self.cfg.class_features, self.class_shift.cpu())

    def _class_stat(self, activity: torch.Tensor) -> torch.Tensor:
        """[b, k] float64 of activity [b, k], what a class averages before its Otsu split (paper Table 2):
        SAEs |z| (Sec. 5.1 "average absolute mu_z", split as log of the mean: a mean of log|z| is -inf for a
        latent that is 0 on any one row); VAEs log var (the official code's statistic; the text says "average
        sigma_z")."""
        if self.model.active_side == "high":
            return activity.to(torch.float64).exp()  # |z| from log|z| (the protocol's high side)
        return activity.to(torch.float64)

    def _masked_curve(self, x: torch.Tensor) -> dict | None:
        """Paper Fig. 4 on x (the first test rows): the decoder input of one forward (stochastic with
        ``mask_curve_sample``, as the official code; seed = common.seed) masked in order of activity."""
        m, sample = self.model, self.cfg.mask_curve_sample
        torch.manual_seed(self.seed)
        out = m(x, sample=sample)
        dec_in = out.extras.get("dec_in", out.codes) if sample else out.codes  # [n, k]
        try:
            m.decode(dec_in[:1])
        except NotImplementedError:  # a variant without Dictionary.decode (a plugin's): no curve, said once
            warnings.warn(f"{m.variant} has no decode(): no masked-dimensions curve (summary.json "
                          "masked_curve null)", ActdictWarning, stacklevel=2)
            return None
        kept = M.kept_grid(m.k, self.cfg.mask_curve_points)
        re = M.masked_re_curve(x, dec_in, out.activity, m.active_side, m.decode, kept)
        return {"kept": kept, "re": re, "rows": len(x), "sample": sample}

    def summary(self, n: int, sum_x, sum_x2, classes: list | None = None) -> dict:
        """The model's entry of summary.json (see ``actdict.analyze.run``), without its feature lists."""
        cfg, m = self.cfg, self.model
        counts = self.ad.cpu()  # [k + 1] rows of each AD
        values = torch.arange(len(counts), dtype=torch.float64)
        ad_mean = float((values * counts).sum()) / n
        ad_std = float(((values - ad_mean) ** 2 * counts).sum()) / n
        fire = self.fire.cpu()
        density = M.feature_density(fire, n)
        fvu = M.fvu_from_moments(self.sse, sum_x, sum_x2, n)
        dead = M.dead_latents(fire)
        out = {
            "variant": m.variant, "k": m.k, "active_side": m.active_side,
            "re_sample": self.re_sample, "re_det": self.sse / n,
            "ad": ad_mean, "ad_std": ad_std ** 0.5, "l0": self.l0_sum / n,
            "ev": 1.0 - fvu, "fvu": fvu, "cos": self.cos_sum / n,
            "dead": dead, "dead_frac": dead / m.k,
            "dense": M.dense_latents(density, cfg.dense_threshold), "dense_threshold": cfg.dense_threshold,
            "ad_hist": M.bincount_histogram(counts),
            "density_hist": M.log_density_histogram(density, cfg.density_bins),
            "masked_curve": self.curve,
        }
        if classes:
            cn = self.class_n.cpu()
            have = (cn > 0).nonzero()[:, 0].tolist()
            mean_act = (self.class_act.cpu()[have] / cn[have, None]).to(torch.float64)  # [C', k]
            if m.active_side == "high":
                mean_act = mean_act.log()  # log of the mean |z|
            group_ad = M.active_dims(mean_act, m.active_side).tolist() if have else []
            ad_sum = self.class_ad.cpu()  # [C]
            out["ad_class"] = [{"label": classes[c], "n": int(cn[c]), "ad": int(ad_sum[c]) / int(cn[c]),
                                "ad_of_mean": g} for c, g in zip(have, group_ad, strict=True)]
            out["ad_class_unlabelled"] = n - int(cn.sum())
            if len(self.class_z):
                sep = M.class_separation(self.class_z.cpu(), self.class_z2.cpu(), self.class_fire.cpu(), cn,
                                         cfg.class_features, shift=self.class_shift.cpu())
                if self.class_bins is not None:  # each listed feature's AUROC of |z| and its bound
                    for c in have:
                        auc, err = self.class_bins.auroc(c, [f["feature"] for f in sep[c]], cn)
                        for f, a, e in zip(sep[c], auc, err, strict=True):  # a perfect separator (d null:
                            # constant on both groups, the class's larger) is 1 exactly, though both constants
                            # may share a bin (1.0 and 1.2: 0.5 +- 0.5 from the bins)
                            f["auroc"], f["auroc_err"] = (1.0, 0.0) if f["d"] is None else (a, e)
                out["class_features"] = [{"label": classes[c], "n": int(cn[c]), "features": sep[c]}
                                         for c in have]
        return out
