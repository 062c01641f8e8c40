"""One dictionary being trained (``Member``: its optimizer, its running record, whether it ``diverged``),
the epoch's row moments it is judged against (``Spread``), and where the batch stream is (``Position``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from actdict.train import dist as dist_
from actdict.train import probe as probe_
from actdict.train.protocol import Dictionary

LEARNED_NOTHING = 0.95  # ``Member.diverged``: a recent SSE over this fraction of the rows' spread
RECENT = 0.02  # weight of each step in ``Member.recent``, the moving average of the SSE (~50 steps)


@dataclass
class Member:
    """One dictionary being trained, with its optimizer state and running record."""

    name: str
    model: Dictionary
    lr: float
    opt: torch.optim.Optimizer = field(init=False)
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch means of the loss terms
    sums: dict[str, float] = field(default_factory=dict)  # loss-term sums of the current epoch
    baseline: float | None = None  # the last epoch's mean SSE of predicting each batch's mean (this process)
    spread: float | None = None  # the last epoch's mean SSE of predicting every row by the epoch's mean row
    norm2: float | None = None  # the last epoch's mean squared norm of the rows (the SSE of predicting 0)
    first: float | None = None  # the SSE of its first step (its initialisation's); a resume state keeps it
    ema: tuple[float, float] = (0.0, 0.0)  # the SSE's moving sums (value, weight), carried by a resume
    epoch_acc: dict | None = None  # the current epoch's baseline sums and spread at the last save (``train``)
    window: dict[str, float] = field(default_factory=dict)  # loss-term sums of the open log interval
    window_n: int = 0  # its steps
    resumed: tuple[set | None, set | None] = (None, None)  # the terms of the resumed epoch's sums and window

    @property
    def recent(self) -> float | None:
        """The SSE's moving average over the last ~50 steps (bias-corrected, as Adam's moments)."""
        return self.ema[0] / self.ema[1] if self.ema[1] else None

    def record(self, key: str, value: float) -> None:
        """Add one step's value of a loss term to the epoch's sums (and the SSE to ``recent``); a term that a
        resumed epoch's sums (or interval's) lack, its resume state written before the term was logged
        (``grad_norm``, 2026-12-06), is left out of that epoch (interval): its mean would miss those steps."""
        if self.resumed[0] is None or key in self.resumed[0]:
            self.sums[key] = self.sums.get(key, 0.0) + value
        if self.resumed[1] is None or key in self.resumed[1]:
            self.window[key] = self.window.get(key, 0.0) + value
        if key == "sse":
            self.ema = ((1 - RECENT) * self.ema[0] + RECENT * value, (1 - RECENT) * self.ema[1] + RECENT)

    def close_window(self, pos: Position, lr: float) -> dict[str, float | int]:
        """The open log interval's record (``actdict.train.log``: means of its terms), and a new interval."""
        n, sums = self.window_n, self.window
        self.window, self.window_n, self.resumed = {}, 0, (self.resumed[0], None)
        means = {k: v / n for k, v in sums.items()}
        return {"step": pos.step, "epoch": pos.epoch, "steps": n, "lr": lr} | means

    def diverged(self) -> str | None:
        """A warning when the last epoch's reconstruction error is over 100x that of predicting each batch's
        mean row (a finite loss, so the run went on, but the dictionary blew up: too high an lr; said
        otherwise when that SSE is no worse than predicting 0, rows far from 0 not normalised, or below its
        first step's, a fresh dictionary far from trained), or when its SSE over the last ~50 steps
        (``recent``) is over ``LEARNED_NOTHING`` x that of predicting every row by the epoch's mean row (an
        explained variance near 0 or below at the end of training: e.g. a sparsity penalty too strong for the
        inputs' scale). Variants that do not train a reconstruction (``lse``) get neither."""
        sse = self.history[-1].get("sse") if self.history else None
        if sse is None or not getattr(self.model, "trains_reconstruction", True):
            return None
        scale = getattr(self.model, "norm_scale", None)  # train.normalize: the loss is in normalised units
        units = 1.0 / float(scale) ** 2 if scale is not None else 1.0
        base, spread = (v * units if v else None for v in (self.baseline, self.spread))
        if base and sse > 100 * base:
            if scale is None and self.norm2 and spread is not None and sse <= 2 * self.norm2:
                # no worse than x_hat = 0: not blown up, but rows far from 0 whose offset it has not learned
                return (f"{self.name}: its last epoch's reconstruction error {sse:.4g} is {sse / base:,.0f}x "
                        f"that of predicting each batch's mean row ({base:.4g}) but about that of predicting "
                        f"0 for every row ({self.norm2:.4g}): the rows sit far from 0 (their mean row's "
                        f"squared norm {self.norm2 - spread:.4g}, their spread about it {spread:.4g}) and it "
                        "has not learned their offset; set train.normalize: mean_scale (docs/training.md), "
                        "a lower lr would not help")
            if self.first is not None and sse < self.first:  # below its first step's: nothing blew up
                return (f"{self.name}: its last epoch's reconstruction error {sse:.4g} is still "
                        f"{sse / base:,.0f}x that of predicting each batch's mean row ({base:.4g}), down "
                        f"from {self.first:.4g} at its first step: it is far from trained, not diverged (a "
                        "fresh dictionary can start far off, e.g. with many more latents than input "
                        "dimensions); train it longer")
            return (f"{self.name}: its last epoch's reconstruction error {sse:.4g} is {sse / base:,.0f}x "
                    f"that of predicting each batch's mean row ({base:.4g}): it diverged; lower its lr (or "
                    "set train.grad_clip)")
        recent = self.recent if self.recent is not None else sse
        if spread and recent > LEARNED_NOTHING * spread:
            cause = ("" if scale is not None else ", or inputs whose scale the penalty does not suit: see "
                     "train.normalize in docs/training.md")
            return (f"{self.name}: its reconstruction error over its last steps {recent:.4g} is "
                    f"{recent / spread:.3g}x that of predicting every row by the mean row ({spread:.4g}; "
                    f"explained variance {1 - recent / spread:.2f}): it has learned almost nothing (too few "
                    f"steps, dead latents, a sparsity penalty too strong{cause})")
        return None

    def setup(self, device: torch.device) -> None:
        fused = device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, fused=fused or None,
                                    foreach=None if fused else True)


class Spread:
    """An epoch's rows as parallel variances: per batch its row count, mean and squared deviations around
    that mean (each batch centred on its own mean in float32, so rows far from 0 lose nothing to rounding),
    summed on the device in float64 (no sync until the epoch ends)."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # [d + 3]: sum n m, sum n |m|^2, squared deviations, rows
        self.norm2: float | None = None  # set by ``end``: the ended epoch's mean squared row norm

    def add(self, x: torch.Tensor) -> torch.Tensor:
        """Add the batch x [b, d] float32 (this process's rows); -> the mean SSE of predicting each of its
        rows by its mean row (the ``diverged`` baseline; NaN for an empty batch)."""
        wide = probe_.wide(x.device)
        mu = x.mean(0)  # [d]
        c = x - mu  # [b, d]
        sq = c.pow(2).sum(-1)  # [b]
        shift = c.mean(0).to(wide)  # [d] float32's rounding of mu: the exact mean is mu + shift
        m = mu.to(wide) + shift  # [d]
        n = torch.full((1,), float(len(x)), device=x.device, dtype=wide)
        dev = sq.sum().to(wide) - n * shift.pow(2).sum()  # [1] sum over rows of |x - m|^2
        v = torch.nan_to_num(torch.cat([m * n, m.pow(2).sum() * n, dev, n]))  # [d + 3]; an empty batch: 0
        self.sums = v if self.sums is None else self.sums + v  # [d + 3]
        return sq.mean()

    def end(self, d: dist_.Dist) -> float | None:
        """The mean SSE of predicting each of the epoch's rows (every rank's) by their mean row; resets."""
        if self.sums is None:
            return None
        v, self.sums = self.sums, None
        if d.on:
            dist_.reduce_(v)
        n = v[-1]
        mean = v[:-3] / n  # [d]
        self.norm2 = float((v[-2] + v[-3]) / n)  # sum |x|^2 = deviations + sum n |m|^2, over the rows
        return float((v[-2] + v[-3] - n * mean.pow(2).sum()) / n)  # within batches + between them

    def state(self, d: dist_.Dist) -> list[float] | None:
        """The sums so far, every rank's (a collective under torchrun), as floats (exact in JSON)."""
        if self.sums is None:
            return None
        v = self.sums.clone()
        if d.on:
            dist_.reduce_(v)
        return v.tolist()

    def restore(self, sums: list[float] | None, device: torch.device, main: bool = True) -> None:
        """Continue from ``state``'s sums: the main process holds them, the other ranks start from 0."""
        if sums is not None:
            v = torch.tensor(sums, dtype=probe_.wide(device), device=device)
            self.sums = v if main else torch.zeros_like(v)


@dataclass
class Position:
    """Where the batch stream is: ``batch`` batches of ``epoch`` done, ``step`` optimizer steps in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
