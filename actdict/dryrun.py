"""What ``--dry-run`` hears from each stage: its ``plan`` returns a ``StagePlan``."""

from __future__ import annotations

from dataclasses import dataclass

from actdict.errors import one_line


@dataclass(frozen=True)
class StagePlan:
    """What a stage would do, with nothing run: the ``lines`` to print, whether it would stop on an error
    (``stops``: ``actdict run`` goes no further), and, for a harvest, whether it writes the store
    (``writes``: a new store, or one continued, grown or written again), which the training's plan then must
    not judge on the store as it is now. Each line is made one line safe on a terminal (``one_line``): a
    line quotes an error's message or a folder's name, which can hold a newline (a stage's line then read as
    two, the second as if another stage said it) or an escape sequence."""

    lines: list[str]
    stops: bool = False
    writes: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", [one_line(s) for s in self.lines])
