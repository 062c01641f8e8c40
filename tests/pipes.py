"""A command of the installed ``actdict`` piped into ``head -1``, for the tests that a reader leaving early
(a closed pipe) ends it quietly."""

import subprocess
import sys
from pathlib import Path


def into_head(*args: str) -> subprocess.CompletedProcess:
    """``actdict ARGS | head -1`` in bash: its stdout is head's, its stderr ends with 'rc N', actdict's exit
    status (141 when the closed pipe ended it)."""
    actdict = Path(sys.executable).parent / "actdict"
    quoted = " ".join(f"'{a}'" for a in (str(actdict), *args))
    cmd = f"{quoted} | head -1; echo \"rc ${{PIPESTATUS[0]}}\" >&2"
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
