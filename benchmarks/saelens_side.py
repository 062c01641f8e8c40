"""The SAELens side of the benchmarks beside it (``train.py``, ``l1_run.py``): the interpreter and path its
child process runs with. SAELens 6 needs transformer-lens < 4 (actdict's own is 4), so it runs apart: in a
venv of its own (``--saelens-venv``), or, where none can be made (a GPU machine that reaches no package
index), this interpreter with SAELens's packages, installed by ``pip install --target``, first on the
child's PYTHONPATH (``--saelens-path``, as ``benchmarks/gpu_session.sh``'s ``saelens`` step runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

VENV = Path("/tmp/actdict-bench-venv")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """``--saelens-venv``, ``--saelens-path`` and ``--no-saelens``, the same in every benchmark."""
    ap.add_argument("--saelens-venv", type=Path, default=VENV, help="the venv SAELens runs in")
    ap.add_argument("--saelens-path", default="", metavar="DIRS",
                    help="run SAELens with this interpreter and DIRS (os.pathsep-separated) first on its "
                         "PYTHONPATH instead of --saelens-venv (benchmarks/gpu_session.sh: packages "
                         "carried as wheels)")
    ap.add_argument("--no-saelens", action="store_true", help="no SAELens run: actdict's side only")


def child_python(args: argparse.Namespace) -> tuple[Path, dict[str, str] | None]:
    """(the Python that runs the SAELens child, its environment: None for this process' own). With
    ``args.saelens_path``: this interpreter, those directories its PYTHONPATH; else the venv's Python, which
    the caller makes (or says how to make) where it is missing."""
    if args.saelens_path:
        return Path(sys.executable), os.environ | {"PYTHONPATH": args.saelens_path}
    return args.saelens_venv / "bin" / "python", None
