"""Learning-rate schedules as pure functions of the optimizer step (so a resumed run needs only the step).

``lr_at(step)`` is the learning rate used by optimizer step ``step`` (0-based). ``cosine_restarts`` is
exactly ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=t0, T_mult=2, eta_min)`` stepped after
every iteration (the paper's official code); the others are the usual modern choices. ``warmup_steps`` > 0
prepends a linear warmup from lr / warmup_steps to lr (the schedule proper then starts at step
``warmup_steps``).
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["cosine_restarts", "constant", "warmup_cosine", "linear_decay"]


def _cycle(t: int, t0: int, t_mult: int = 2) -> tuple[int, int]:
    """(steps into its cosine cycle, that cycle's length) of schedule step t."""
    if t0 < 1:  # the loop below would never end
        raise ValueError(f"t0 must be >= 1, got {t0}")
    t_cur, t_i = t, t0
    while t_cur >= t_i:  # the same integer bookkeeping as torch's scheduler
        t_cur -= t_i
        t_i *= t_mult
    return t_cur, t_i


def _cosine_restarts(t: int, lr: float, eta_min: float, t0: int) -> float:
    t_cur, t_i = _cycle(t, t0)
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def lr_at(step: int, lr: float, schedule: Schedule, total_steps: int, warmup_steps: int = 0,
          eta_min: float = 1e-6, t0: int = 5) -> float:
    """The learning rate of optimizer step ``step`` out of ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    span = max(total_steps - warmup_steps, 1)
    if schedule == "constant":
        return lr
    if schedule == "cosine_restarts":
        return _cosine_restarts(t, lr, eta_min, t0)
    if schedule == "warmup_cosine":
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * min(t / span, 1.0))) / 2
    if schedule == "linear_decay":
        return eta_min + (lr - eta_min) * max(1.0 - t / span, 0.0)
    raise ValueError(f"unknown schedule {schedule!r}")


def restart_note(total_steps: int, schedule: Schedule, t0: int = 5, warmup_steps: int = 0) -> str | None:
    """For ``cosine_restarts``: a note when the run's last step falls in the first quarter of a cosine cycle
    after a warm restart, where the learning rate is still near its maximum, so the final dictionaries are
    measured just after the restart threw them off (docs/results.md, E31); None otherwise, and for runs of
    under 100 steps."""
    t = total_steps - warmup_steps  # the schedule proper's steps 0 .. t - 1
    if schedule != "cosine_restarts" or t < 100:  # (a shorter run is a smoke test)
        return None
    into, length = _cycle(t - 1, t0)  # the last step's place in its cycle
    done = into + 1
    if 4 * done > length:
        return None
    share = _cosine_restarts(t - 1, 1.0, 0.0, t0)
    at = warmup_steps + t - done
    return (f"the cosine_restarts schedule (T_0 {t0}, T_mult 2) restarts at step {at:,} and the run ends "
            f"{done:,} steps later, in a {length:,}-step cycle, its learning rate still {share:.0%} of lr: "
            "the final dictionaries are measured just after a warm restart, which can undo much of the fit "
            f"(docs/results.md, E31); train.max_steps={at} ends the run at the previous cycle's low point, "
            f"{at + length} at the next one's")
