"""Names that become files and folders (dictionaries, hooks, a sweep's items): what this platform's file
system takes (``name_problem``: Windows' reserved characters and device names), a path Windows may refuse
for its length (``long_path_problem``), two names that one case-insensitive disk would merge
(``case_clash``), and a hook's name as one folder of a store (``check_hook_name``). The stages' config
checks ask them before anything is written.
"""

from __future__ import annotations

import os

from actdict.config import ConfigError


def is_hook_name(hook: str) -> bool:
    """``hook`` can name one folder of a store: not empty, no '/', not starting with '.' ('..' would be the
    store's parent, '.' the store itself; dot names are the store's own files)."""
    return bool(hook) and "/" not in hook and not hook.startswith(".")


WINDOWS = os.name == "nt"
"""Names that become files (dictionaries, hooks) must also be names Windows takes: ``name_problem``."""


_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10))}


def windows_name_problem(name: str) -> str | None:
    """Why Windows cannot name a file or folder ``name`` (a character it reserves: ``\\`` is its path
    separator, ``:`` a file's data stream; a device's name; a trailing dot or space, which it drops), or
    None."""
    if bad := "".join(sorted({c for c in name if c in '<>:"\\|?*' or ord(c) < 32})):
        return f"Windows takes none of {bad!r} in a file name"
    if (stem := name.split(".")[0].rstrip(" ")).upper() in _DEVICES:
        return f"Windows keeps {stem!r} for a device"
    if name.endswith((".", " ")):
        return "Windows drops a file name's trailing dot or space"
    return None


def name_problem(name: str) -> str | None:
    """Why this platform cannot name a file ``name``, beyond '/' and NUL (Windows': ``windows_name_problem``;
    POSIX file systems take any other name), or None."""
    return windows_name_problem(name) if WINDOWS else None


WINDOWS_MAX_PATH = 259  # characters: MAX_PATH (260) less its NUL


def long_path_problem(path: str, made: str) -> str | None:
    """Why Windows may fail to write ``path`` (the longest file ``made`` writes), or None: over 259
    characters, a path its calls refuse unless long paths are enabled on the machine (then Python takes
    them), a failure deep in a write, hours in. Said only where the run is on Windows."""
    if not WINDOWS or (over := len(path) - WINDOWS_MAX_PATH) <= 0:
        return None
    return (f"{made} writes paths of up to {len(path)} characters ({path}), and Windows takes at most "
            f"{WINDOWS_MAX_PATH} unless long paths are enabled (LongPathsEnabled=1 in the registry key "
            "HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem, as an administrator): a write would fail "
            f"there; set a shorter run_dir or shorter names (by {over} character{'s' * (over > 1)}), or "
            "enable long paths")


def case_clash(names: list[str]) -> tuple[str, str] | None:
    """The first two of ``names`` that differ only in case ('SAE', 'sae'), None when none do: on a
    case-insensitive file system (macOS' and Windows' default) they name one file or folder, and the second
    would overwrite the first without a word. Refused on every platform: a run folder or store made on Linux
    is copied to a laptop."""
    seen: dict[str, str] = {}
    for n in names:
        if (first := seen.setdefault(n.casefold(), n)) != n:
            return first, n
    return None


def check_hook_name(hook: str, name: str) -> None:
    """ConfigError naming the field ``name`` unless ``is_hook_name(hook)``."""
    if not is_hook_name(hook):
        raise ConfigError(f"{name} must be a non-empty name without '/', not starting with '.', got {hook!r}")
    if why := name_problem(hook):
        raise ConfigError(f"{name}={hook!r} cannot name a folder of the store here: {why}; rename it")
