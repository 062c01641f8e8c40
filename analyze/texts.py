"""The texts of the rows of a sentence-embedding store (``harvest.mode: embeddings``), for the report.

Such a store keeps no tokens (``token_ids`` = -1): each row embeds one document or one paragraph of the
harvest's source, ``doc`` being the document's index in the source's (deterministic) order and ``pos`` the
paragraph's index in it. The analysis reads the texts of the rows it shows again from the source the
manifest records, through the harvest's own ``iter_documents`` and ``text_units``, up to the last document
needed; the model is not run. When the source cannot be read any more (a hub dataset offline, moved files)
or its files changed since the harvest (the manifest's ``source_fingerprint``: the same doc and pos would
name other texts), the report shows the rows without text, as before, and a warning says why.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from actdict.errors import ActdictError, ActdictWarning

MAX_CHARS = 400
"""Characters kept of each text (longer ones end with an ellipsis)."""
KEPT_MAX_CHARS = 1 << 26
"""Characters of the evaluated rows' texts that ``inputs.source_labels`` keeps when it reads the source for
``analyze.labels_field`` (so that ``row_texts`` does not read it again), each text counted with
``KEPT_ENTRY_CHARS`` more for its entry: 64M (~120,000 rows of 400 characters, ~100 MiB); past it none are
kept and the texts are read again."""
KEPT_ENTRY_CHARS = 160
"""What one kept text's entry costs beside its characters, in characters (its (doc, pos) key, the string's
header, the dict's slot: ~160 bytes in CPython), so that many short texts (a million of 20 characters: 20M
characters, ~200 MiB held) pass ``KEPT_MAX_CHARS`` as their memory does."""


def has_text_rows(manifest: dict) -> bool:
    """Whether the store's rows are embedded texts (documents or paragraphs) rather than tokens."""
    return manifest.get("kind") == "embeddings" and isinstance(manifest.get("harvest"), dict)


def clip(text: str, max_chars: int = MAX_CHARS) -> str:
    """``text`` with its whitespace runs made single spaces, cut to ``max_chars`` (ending in an ellipsis)."""
    s = " ".join(text.split())
    return s if len(s) <= max_chars else s[: max_chars - 1] + "\u2026"


def unit_texts(units: Iterable[tuple[int, int, str]], wanted: set[tuple[int, int]],
               max_chars: int = MAX_CHARS) -> dict[tuple[int, int], str]:
    """(doc, pos) -> clipped text for each wanted pair found in ``units`` ((doc, pos, text) in doc order,
    as ``harvest.embed.text_units`` gives them); stops after the last wanted document."""
    out: dict[tuple[int, int], str] = {}
    last = max((d for d, _ in wanted), default=-1)
    for doc, pos, text in units:
        if doc > last:
            break
        if (doc, pos) in wanted:
            out[(doc, pos)] = clip(text, max_chars)
    return out


def harvest_config(manifest: dict):
    """The store's harvest config (its ``HarvestConfig``), for reading its source's documents again: the
    same doc indices name the same documents only if the source is the harvest's, so a ``files`` source
    whose manifest records no ``source_fingerprint`` (a hand-made one), or whose files changed since, is a
    ValueError saying which (a config the manifest cannot build: ConfigError)."""
    from actdict.config import build
    from actdict.harvest.config import HarvestConfig
    from actdict.harvest.sources import files_changed

    cfg = build(HarvestConfig, manifest["harvest"], "the store manifest's harvest")
    if cfg.source.kind == "files" and not manifest.get("source_fingerprint"):  # a hand-made manifest's
        raise ValueError(f"the manifest records no source_fingerprint of the files at "
                         f"{cfg.source.path!r}, so they cannot be told to be the harvest's")  # any files
    if changed := files_changed(manifest, cfg.source):  # other texts at the same (doc, pos): not theirs
        raise ValueError(f"{changed} since the harvest")
    return cfg


def row_texts(manifest: dict, hits: Iterable[tuple[int, int, int]],
              max_chars: int = MAX_CHARS, known: dict | None = None) -> dict[int, str]:
    """row -> its text, for the (row, doc, pos) ``hits`` of an embeddings store ({} for other stores, or with
    a warning when the source cannot be read). ``known``: (doc, pos) -> text (clipped to ``MAX_CHARS``)
    already read from the source (``inputs.source_labels``); when it holds every hit's, the source is not
    read again."""
    if not has_text_rows(manifest):
        return {}
    from actdict.harvest.embed import text_units
    from actdict.harvest.sources import iter_documents

    hits = list(hits)
    if known and max_chars == MAX_CHARS and all((d, p) in known for _, d, p in hits):
        return {r: known[(d, p)] for r, d, p in hits}
    try:
        cfg = harvest_config(manifest)
        found = unit_texts(text_units(iter_documents(cfg.source), cfg.embed.unit),
                           {(d, p) for _, d, p in hits}, max_chars)
    except (ActdictError, OSError, ValueError, KeyError, ImportError) as e:
        warnings.warn(f"the texts of the embedded rows could not be read from the harvest's source ({e}); "
                      "the report shows their doc and pos only (analyze.texts can name a file of the rows' "
                      "texts, one per row)", ActdictWarning, stacklevel=2)
        return {}
    return {r: found[(d, p)] for r, d, p in hits if (d, p) in found}
