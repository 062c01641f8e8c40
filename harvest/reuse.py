"""Is a store already this config's? The manifests of a store's hooks weighed against a harvest config.

A complete store is used as it is by any config that would write the same rows: the same harvest but for how
the forward ran (``RUN_KEYS``: batch size, device), or naming some of the hooks of a harvest of more
(``holds_hooks``), or spelling the same hooks as patterns (``to_add``, decided once the model has expanded
them; patterns the store's manifests spell the same way stand for the store's hooks). A config that names
hooks the store lacks, and is otherwise its complete hooks' config, keeps those (``held_hooks``) and writes
the others beside them (``harvest.added``). Anything else is another harvest, and is refused naming the keys
that differ, or, where only run settings stand in the way of resuming or growing it, naming the overrides
that set them back (``set_back``). Nothing here reads a shard's data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from actdict.config_data import config_changes, config_hash, to_dict
from actdict.dryrun import StagePlan
from actdict.harvest.config import RUN_KEYS, HarvestConfig, hook_pattern, rows_view
from actdict.harvest.layout import FORMAT_VERSION, SHARDS, shard_problem, whole_shards
from actdict.harvest.resume import HarvestError, hook_dir, read_manifest
from actdict.harvest.sources import files_changed
from actdict.harvest.store import list_hooks


def hook_manifests(path: str) -> dict[str, dict]:
    """The manifest of every hook in the store (none when there is no store yet); reads no shard."""
    out = {}
    for h in list_hooks(path):
        try:
            out[h] = read_manifest(path, h)
        except (OSError, ValueError) as e:
            raise HarvestError(f"store {path} has a damaged hook {h!r} ({e}); delete {path}, re-run") from e
    return out


def complete_for(path: str, hooks: list[str], cfg: HarvestConfig,
                 manifests: dict[str, dict] | None = None) -> bool:
    """True when the store is complete for ``cfg``; raise when it holds another harvest (naming the config
    keys that differ), when a complete hook's shards are not all there (naming them), or when the local
    source files changed since a complete hook was harvested (their fingerprint: path, size, mtime).
    ``hooks`` may hold patterns (``all``, ``blocks.*...``): then every hook found must be complete, and a
    store whose manifests name other hooks is decided once the model has expanded them (the same patterns
    expanded to the store's hooks: decided here, without the model). Names only: a complete store of the
    same config with more hooks (``holds_hooks``) is this config's.
    ``manifests``: those of ``hook_manifests(path)`` when already read."""
    manifests = hook_manifests(path) if manifests is None else manifests
    chash, cfg_json = config_hash(cfg), as_json(cfg)
    literal = by_name(hooks)
    if literal is not None and holds_hooks(manifests, literal, cfg_json):
        manifests = {h: manifests[h] | {"config_hash": chash} for h in literal}  # those of this config
    if why := added_growth(path, manifests, cfg_json):
        raise HarvestError(why)
    beside = left_beside(manifests, hooks, cfg_json)  # left to their own harvest's command
    spelled = literal is None  # patterns: a store whose hooks were spelled otherwise is decided
    deferred = False  # by harvest(), once the model has expanded them (``to_add``); spelled the
    for h, m in manifests.items():  # same (another batch_size), its hooks are what they expand to
        if h in beside:
            continue
        if spelled and m.get("config_hash") != chash and same_rows(m, cfg_json, ("hooks",)) and not (
                same_rows(m, cfg_json)):
            deferred = True
        elif m.get("config_hash") != chash and not same_rows(m, cfg_json) and not (
                same_rows(m, cfg_json, ("hooks",))):  # such a hook is kept; the harvest adds the others
            old = m.get("harvest")
            if back := set_back(m, cfg_json):
                how = "resuming this unfinished harvest" if not m.get("complete") else "growing this store"
                raise HarvestError(
                    f"store {path} (hook {h!r}) was begun with other settings, and {how} needs those (its "
                    f"rows must be those of one uninterrupted run): add {back} to the command")
            if m.get("config_hash") is None and "harvest" not in m:  # imported / written from Python
                raise HarvestError(
                    f"store {path} (hook {h!r}) holds vectors written without a config (python -m "
                    "actdict.harvest.vectors, or write_vectors / import_vectors from Python), which no "
                    "harvest section describes: run actdict train and actdict analyze on it (or leave the "
                    "harvest section out of the config: actdict run then skips the harvest), or set "
                    "run_dir / store to another folder for this config's harvest")
            if m.get("format_version", 1) < FORMAT_VERSION and same_rows(m, cfg_json, ("max_tokens",)):
                was, fmt = old.get("max_tokens"), m.get("format_version", 1)  # growth reopens only stores
                raise HarvestError(  # of this format (``growable``)
                    f"store {path} (hook {h!r}) is a complete harvest of this config but for max_tokens "
                    f"({was} -> {cfg_json.get('max_tokens')}), written by an earlier actdict (format {fmt}), "
                    f"which cannot grow: use it with harvest.max_tokens={was}, or set run_dir / store to "
                    "another folder to harvest more rows")
            if two := grow_then_add(m, cfg_json):
                raise HarvestError(f"store {path} (hook {h!r}) {two}")
            changes = (config_changes(rows_view(old), rows_view(cfg_json)) or config_changes(old, cfg_json)
                       ) if isinstance(old, dict) else []
            changes.sort(key=lambda c: not c.startswith("mode:"))  # another kind of store: said first
            what = "; ".join(changes[:8]) or f"config hash {m.get('config_hash')}, this config's {chash}"
            raise HarvestError(
                f"store {path} holds a harvest with another config (hook {h!r}: {what}); delete {path}, or "
                "set run_dir / store to another folder")
        if m.get("complete"):
            fs, d = hook_dir(path, h)
            names = whole_shards(fs, d)
            if problem := shard_problem(names, int(m.get("n_shards", len(names)))):
                raise HarvestError(f"store {path}, hook {h!r}: {problem}")
            if cfg.mode != "vectors" and (changed := files_changed(m, cfg.source)):
                raise HarvestError(
                    f"store {path} (hook {h!r}) was harvested before its {changed}: its rows are those of "
                    f"the old files. Delete {path} to harvest the files again, or set store / run_dir to "
                    "another folder; to use the store as it is (the files were only touched or copied), run "
                    "actdict train and actdict analyze instead of actdict run")
    return not deferred and bool(manifests) and all(
        h in manifests for h in hooks if hook_pattern(h) is None) and all(  # the names among patterns too
        m.get("complete") for m in manifests.values())


def added_growth(path: str, manifests: dict[str, dict], harvest_cfg: dict) -> str:
    """Why ``harvest_cfg`` (as JSON), a larger max_tokens, does not grow a store with an added layer (its
    complete hooks harvested by configs naming other hooks; ``resume.growable``), as a line that says how it
    would: '' when the store is no such store or this is no growth of it. Else the refusal named the hooks
    and max_tokens as 'another config' and said to delete the store."""
    olds = [m.get("harvest") for m in manifests.values()]
    if len(olds) < 2 or not all(m.get("complete") and m.get("format_version") == FORMAT_VERSION and
                                isinstance(o, dict) for m, o in zip(manifests.values(), olds, strict=True)):
        return ""
    aside = ("hooks", "max_tokens")
    if len({json.dumps(o.get("hooks")) for o in olds}) < 2 or any(
            rows_view(o, aside) != rows_view(harvest_cfg, aside) for o in olds):
        return ""
    was, new = olds[0].get("max_tokens"), harvest_cfg.get("max_tokens")
    if not grows_to(was, new):
        return ""
    names = sorted(manifests)
    runs = [k for k in RUN_KEYS if len({json.dumps(o.get(k)) for o in olds}) > 1]
    if runs:
        each = "; ".join(f"{h}: " + ", ".join(f"{k} {m['harvest'].get(k)}" for k in runs)
                         for h, m in manifests.items())
        return (f"store {path} cannot grow: its hooks were harvested with different {' and '.join(runs)} "
                f"({each}), and a growth continues every hook with the settings it began with: use it with "
                f"harvest.max_tokens={was}, or set run_dir / store to another folder to harvest more rows")
    said = [] if set(harvest_cfg.get("hooks") or []) == set(names) and by_name(
        harvest_cfg.get("hooks") or []) is not None else [f"'harvest.hooks={json.dumps(names)}'"]
    said += [f"'harvest.{k}={v if isinstance(v := olds[0].get(k), str) else json.dumps(v)}'" for k in RUN_KEYS
             if olds[0].get(k) != harvest_cfg.get(k)]
    if not said:  # growable: not refused here
        return ""
    return (f"store {path} holds hooks {names} harvested by configs naming other hooks (a layer added): it "
            f"grows to max_tokens={new} with a config naming each of them by name, and no other, with the "
            f"settings they began with (add other hooks once it has grown): add {' '.join(said)} to the "
            "command")


def grow_then_add(manifest: dict, harvest_cfg: dict) -> str:
    """When ``harvest_cfg`` (as JSON) would both grow the complete hook of ``manifest`` (a larger max_tokens)
    and add hooks beside it, and nothing else differs: how to do it in two harvests ('' otherwise); it was
    refused as another config, to be deleted."""
    old = manifest.get("harvest")
    aside = ("hooks", "max_tokens")
    if not (manifest.get("complete") and isinstance(old, dict) and rows_view(old, aside) == rows_view(
            harvest_cfg, aside) and old.get("hooks") != harvest_cfg.get("hooks")):
        return ""
    was, new = old.get("max_tokens"), harvest_cfg.get("max_tokens")
    if not grows_to(was, new):
        return ""
    hooks = json.dumps(old.get("hooks"))
    return (f"holds max_tokens={was} of this harvest with hooks {old.get('hooks')}: growing it and adding "
            f"hooks are two harvests: first grow it, adding 'harvest.hooks={hooks}' to this command, then "
            "run this command as it is to add the others")


def unfinished_beside(manifest: dict, harvest_cfg: dict) -> bool:
    """The hook is an unfinished harvest of ``harvest_cfg`` (as JSON) but for its hooks, and one that
    ``harvest_cfg`` does not name: resumed by its own config, it is left aside by this one, which resumes
    its own hooks meanwhile. Else a repair (``actdict store --repair``) of both the held and the added hook
    of a store with an added layer left a store that neither config resumed, each naming the other's."""
    old = manifest.get("harvest")
    return not manifest.get("complete") and isinstance(old, dict) and (
        rows_view(old, ("hooks",)) == rows_view(harvest_cfg, ("hooks",)))


def by_name(hooks: list[str]) -> list[str] | None:
    """``hooks`` when each is named by name; None where any is a pattern (``all``, ``blocks.*...``), which
    the model decides."""
    return None if any(hook_pattern(h) for h in hooks) else list(hooks)


def left_beside(manifests: dict[str, dict], hooks: list[str], harvest_cfg: dict) -> dict[str, dict]:
    """The store's hooks that a harvest of ``hooks`` with ``harvest_cfg`` (as JSON) leaves as they are,
    unfinished: when it names each of its hooks by name and the store holds them all, those it does not
    name that another config of this harvest but for its hooks began (``unfinished_beside``). Passed by in
    ``complete_for``, and said by the dry run and the skip line, which otherwise said it continued them,
    where only their own config does."""
    literal = by_name(hooks)
    if literal is None or not all(h in manifests for h in literal):
        return {}
    return {h: m for h, m in manifests.items() if h not in literal and unfinished_beside(m, harvest_cfg)}


def left_to_theirs(beside: dict[str, dict]) -> str:
    """'; hook 'X' (unfinished) is left to the config that wrote it (hooks [A, B], config hash HASH)': what
    a harvest does with the hooks of ``left_beside`` ('' when none), naming the config to run for each."""
    return "".join(f"; hook {h!r} (unfinished) is left to the config that wrote it (hooks "
                   f"{as_written(m['harvest'].get('hooks'))}, config hash {m.get('config_hash')}): run that "
                   "one for it"
                   for h, m in sorted(beside.items()))


def its_own(manifests: dict[str, dict], cfg: HarvestConfig) -> dict[str, dict]:
    """The manifests of the store's hooks that a harvest of ``cfg`` found complete uses: the hooks it names,
    when it names each by name (the others, a layer another config added beside them, complete or left to
    it, are not what this run skips or reads: ``how_held`` said 'harvested with hooks [L1, L3]', that
    config's, of a store whose L1 this config wrote); with patterns, every hook (the model decides)."""
    literal = by_name(cfg.hooks)
    if literal is None:
        return manifests
    return {h: manifests[h] for h in literal if h in manifests}


def complete_said(manifests: dict[str, dict], cfg: HarvestConfig) -> tuple[str, str]:
    """What the line saying a store is complete for ``cfg`` (the harvest's skip, its dry run's) adds: how
    its own hooks were harvested where that differs (``how_held`` of ``its_own``), and the unfinished hooks
    left to the configs that wrote them (``left_to_theirs``)."""
    cfg_json = as_json(cfg)
    return (how_held(its_own(manifests, cfg), cfg_json),
            left_to_theirs(left_beside(manifests, list(cfg.hooks), cfg_json)))


def holds_hooks(manifests: dict[str, dict], hooks: list[str], harvest_cfg: dict) -> bool:
    """The store is a complete harvest of ``harvest_cfg`` (as JSON) but for its ``hooks``, and holds every
    one of ``hooks`` (names): a hook's rows do not depend on the other hooks of its forward, so a config
    naming some hooks of a harvest of more (``hooks: [all]``) uses that store as it is."""
    found = [manifests.get(h) for h in hooks]
    return all(m and same_rows(m, harvest_cfg, ("hooks",)) for m in found)


def same_rows(manifest: dict, harvest_cfg: dict, also: tuple[str, ...] = ()) -> bool:
    """``manifest`` is a complete harvest of ``harvest_cfg`` (as JSON) but for what does not decide its rows
    (``rows_view``: ``RUN_KEYS``, settings its mode does not read) and ``also``."""
    old = manifest.get("harvest")
    return bool(manifest.get("complete")) and isinstance(old, dict) and (
        rows_view(old, also) == rows_view(harvest_cfg, also))


def grows_to(was: int | None, new: int | None) -> bool:
    """A harvest of ``new`` max_tokens holds more rows than one of ``was`` (None: the whole source)."""
    return was is not None and (new is None or new > was)


def set_back(manifest: dict, new: dict) -> str:
    """The overrides that give ``new`` (a harvest config as JSON) what a resume or a growth of the hook of
    ``manifest`` needs, when nothing else differs: an unfinished harvest resumes only with the
    ``RUN_KEYS``, hooks and max_tokens it began with ("'harvest.batch_size=64' 'harvest.max_tokens=1000'");
    a complete one grows (a larger max_tokens) only with its ``RUN_KEYS``. '' otherwise."""
    old = manifest.get("harvest")
    if not isinstance(old, dict):
        return ""
    a, b = (old, new) if not manifest.get("complete") else (  # growing: settings it does not read aside
        rows_view(h) | {k: h.get(k) for k in RUN_KEYS} for h in (old, new))
    keys = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    if manifest.get("complete"):  # growing: max_tokens larger, run keys to set back
        grows = "max_tokens" in keys and grows_to(old.get("max_tokens"), new["max_tokens"])
        back = set(RUN_KEYS)
        if not grows or keys - back - {"max_tokens"}:
            return ""
    else:
        back = {"hooks", "max_tokens", *RUN_KEYS}
        if keys - back:
            return ""
    said = [k for k in ("hooks", *RUN_KEYS, "max_tokens") if k in keys & back]
    return " ".join(f"'harvest.{k}={v if isinstance(v := old.get(k), str) else json.dumps(v)}'"
                    for k in said)


def as_json(cfg: HarvestConfig) -> dict:
    """The config as a manifest holds it (JSON types: lists, not tuples)."""
    return json.loads(json.dumps(to_dict(cfg)))


def how_held(manifests: dict[str, dict], harvest_cfg: dict) -> str:
    """'; it was harvested with ...': where a complete store reused as this config's differs from it."""
    olds = [m.get("harvest", {}) for m in manifests.values()]
    diff = {k: sorted({as_written(o.get(k)) for o in olds if o.get(k) != harvest_cfg.get(k)})
            for k in ("hooks",) + RUN_KEYS}
    said = [f"{k} {', '.join(v)}" for k, v in diff.items() if v]
    return f"; it was harvested with {'; '.join(said)}" if said else ""


def as_written(value) -> str:
    """A config value as a line says it: a list as YAML writes it inline, unquoted ('[all]', '[blocks.1.hook_
    resid_post, blocks.3.hook_resid_post]', as ``hooks:`` is written), anything else as ``str`` does."""
    return f"[{', '.join(map(str, value))}]" if isinstance(value, list) else str(value)


def held_hooks(manifests: dict[str, dict], cfg: HarvestConfig) -> dict[str, dict]:
    """The store's complete hooks that a harvest of ``cfg`` but for its ``hooks`` wrote (another
    config_hash): their rows are this config's, so a harvest of it keeps them as they are and writes only
    the hooks they lack beside them (a layer added to a store), whose rows must then be theirs."""
    chash, cfg_json = config_hash(cfg), as_json(cfg)
    return {h: m for h, m in manifests.items()
            if m.get("config_hash") != chash and same_rows(m, cfg_json, ("hooks",))}


def to_add(path: str, hooks: list[str], cfg: HarvestConfig, say: Callable[[str], None],
           manifests: dict[str, dict]) -> list[str]:
    """Of ``hooks`` (the config's, expanded by the model), those the harvest writes: all of them, but for
    the store's ``held_hooks``. [] (and says so) when the store holds them all: a config whose hooks were
    spelled otherwise than the store's (``hooks: [all]`` against the same hooks listed by name, which
    ``complete_for`` leaves to this point), or naming some of a larger harvest's. Hooks this config wrote
    complete (a pattern that added them before) are not written again either. ``manifests``: the store's
    (``hook_manifests``)."""
    chash = config_hash(cfg)
    held = held_hooks(manifests, cfg)
    new = [h for h in hooks if h not in held and not (
        manifests.get(h, {}).get("complete") and manifests[h].get("config_hash") == chash)]
    if not new:
        say(f"harvest: store {path} is already complete for this config (config hash {chash}"
            f"{how_held(held, as_json(cfg))}); skipping")
    elif held:
        rows = f"{int(next(iter(held.values())).get('n_rows', 0)):,}"
        how = how_held(held, as_json(cfg)).replace("; it was", ",")
        say(f"harvest: store {path} holds this harvest's {rows} rows in {', '.join(sorted(held))} (complete"
            f"{how}): adding {', '.join(new)} beside them, each shard's rows checked against theirs")
    return new


def patterned(manifests: dict[str, dict], cfg: HarvestConfig) -> bool:
    """``cfg.hooks`` holds patterns (``all``, ``blocks.*...``) and the store is a complete harvest of ``cfg``
    but for its hooks: ``to_add`` decides it once the model has expanded them (skipped or added to;
    never continued or written)."""
    cfg_json = as_json(cfg)
    return any(hook_pattern(h) for h in cfg.hooks) and all(
        same_rows(m, cfg_json, ("hooks",)) for m in manifests.values())


def plan(common, cfg: HarvestConfig) -> StagePlan:
    """``actdict harvest CONFIG --dry-run``: what the harvest would do with the store, decided as it decides
    before loading the model (skip a complete store, grow one, add hooks to one, continue an unfinished one,
    refuse another harvest's, or begin one), with nothing loaded or written; an import that writes the store
    stops at once on a vectors file that it cannot read (missing, of no known format: ``unreadable``), a
    harvest that writes it on a model it cannot have (``models.available``: a folder not there, a hub model
    offline and not cached, the hub unreachable) or a source it cannot read (``sources.unavailable``), and a
    harvest whose patterns only the model can weigh against the store on a model it cannot have; before
    those, any that writes on a store folder it may not write in (``store_write_problem``), as the harvest
    checks first."""
    said = store_plan(common, cfg)
    if said.writes and (why := store_write_problem(common.store_path) or input_problem(cfg)):
        return StagePlan([f"harvest: would stop: {why}"], stops=True)
    return said


def store_write_problem(path: str) -> str | None:
    """Why the harvest could not write the local store ``path`` (its folder, its hooks' folders and their
    shards: what ``resume.store_lock``'s check asks before the model loads), found without writing."""
    from actdict.lock import write_problem

    if "://" in path:
        return None
    names = [n for n in (os.listdir(path) if os.path.isdir(path) else []) if n[:1] != "."]
    folders = [path, *(p for h in names for p in (Path(path, h), Path(path, h, SHARDS)) if p.is_dir())]
    return write_problem(folders, "the store's manifests and shards", elsewhere="set store to another folder")


def input_problem(cfg: HarvestConfig) -> str | None:
    """Why the harvest could not read its input here, found without reading it (None: none found): a vectors
    file missing or of no known format, else a model it cannot have, then a source it cannot read."""
    from actdict.harvest.sources import unavailable
    from actdict.harvest.vector_read import unreadable

    if cfg.mode == "vectors":
        return unreadable(cfg.vectors.path, cfg.vectors.key)
    return model_problem(cfg) or unavailable(cfg.source)  # the harvest's order


def model_problem(cfg: HarvestConfig) -> str | None:
    """Why the harvest could not load its model here (``models.available``: a hub model's cache offline,
    else one probe of the hub), or None."""
    from actdict.harvest.models import ModelError, available

    try:
        available(cfg.model)
    except ModelError as e:
        return str(e)
    return None


def store_plan(common, cfg: HarvestConfig) -> StagePlan:
    """What the harvest would do with the store (``plan``), its input unread."""
    from actdict.harvest.resume import growable, numerics_refusal
    from actdict.harvest.run import describe_source
    from actdict.harvest.vectors import source_change

    path, chash = common.store_path, config_hash(cfg)
    tokens = "null (the whole source)" if cfg.max_tokens is None else f"{cfg.max_tokens:,}"
    source = describe_source(cfg.source)
    what = {"vectors": f"your own vectors {cfg.vectors.path}",
            "embeddings": f"{cfg.model} on the {source}, one row per {cfg.embed.unit}",
            "tokens": f"{cfg.model} hooks {', '.join(cfg.hooks)} on the {source}, max_tokens {tokens}"
            }[cfg.mode]
    hook = {"vectors": cfg.vectors.hook, "embeddings": cfg.embed.hook}.get(cfg.mode)
    try:
        manifests = hook_manifests(path)
        if cfg.mode == "tokens" and growable(manifests, as_json(cfg)):
            if why := numerics_refusal(manifests, cfg, path, grow=True):  # refused once the model is loaded
                return StagePlan([f"harvest: would stop: {why}"], stops=True)
            return StagePlan([f"harvest: grows store {path} to max_tokens {tokens}: {what}"], writes=True)
        if complete_for(path, list(cfg.hooks) if hook is None else [hook], cfg, manifests):
            if cfg.mode == "vectors" and (change := source_change(path, cfg.vectors)):
                return StagePlan([f"harvest: writes store {path} again ({cfg.vectors.path} changed since it "
                                  f"was imported: {change}): {what}"], writes=True)
            own, aside = complete_said(manifests, cfg) if hook is None else ("", "")
            return StagePlan([f"harvest: store {path} is already complete for this config (config hash "
                              f"{chash}{own}): skipped{aside}"])
    except HarvestError as e:  # another harvest's store
        return StagePlan([f"harvest: would stop: {e}"], stops=True)
    if not manifests:
        return StagePlan([f"harvest: a new store {path}: {what}"], writes=True)
    if cfg.mode == "tokens" and patterned(manifests, cfg):
        if why := model_problem(cfg):  # the model expands the patterns: the harvest loads it first
            return StagePlan([f"harvest: would stop: {why}"], stops=True)
        return StagePlan([f"harvest: store {path} is a complete harvest of this config with hooks "
                          f"{', '.join(sorted(manifests))}: skipped if it holds every hook "
                          f"{', '.join(cfg.hooks)} names on "
                          f"{cfg.model} (decided once the model is loaded), else the others are added beside "
                          f"them: {what}"])
    beside = left_beside(manifests, list(cfg.hooks), as_json(cfg)) if cfg.mode == "tokens" else {}
    aside = left_to_theirs(beside)
    manifests = {h: m for h, m in manifests.items() if h not in beside}  # what this config writes or keeps
    if cfg.mode == "tokens" and (held := held_hooks(manifests, cfg)):
        rows = int(next(iter(held.values())).get("n_rows", 0))
        adds = ", ".join(h for h in cfg.hooks if h not in held)
        return StagePlan([f"harvest: adds {adds} to store {path} beside {', '.join(sorted(held))} (complete, "
                          f"this harvest's {rows:,} rows; each added shard's rows checked against theirs): "
                          f"{what}{aside}"], writes=True)
    held = ", ".join(f"{h} (complete, {m.get('n_rows', 0):,} rows)" if m.get("complete") else
                     f"{h} (unfinished)" for h, m in manifests.items())
    if cfg.mode == "tokens" and (why := numerics_refusal(manifests, cfg, path, grow=False)):
        return StagePlan([f"harvest: would stop: {why}"], stops=True)
    if cfg.mode == "tokens":
        return StagePlan([f"harvest: continues the unfinished harvest in {path} ({held}; its whole shards "
                          f"are kept): {what}{aside}"], writes=True)
    return StagePlan([f"harvest: writes store {path} again ({held}): {what}"], writes=True)
