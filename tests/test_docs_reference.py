"""The documentation as a reference, checked against the code so that it cannot drift.

* Config keys: every field of every config dataclass, and every variant's params, is named on the page of its
  section with a default, and each default the page states (a ``| field | default |`` table row, a
  ``name value`` pair of docs/variants.md's params, "`key` (default X)") is the code's; a table row of a
  key no dataclass of the page has (a field renamed or removed, its row left) is a finding too.
* Cross-references: every "docs/PAGE.md, 'Section'" (or "Section", a results.md entry E31) cited in the code
  or in the docs, and every [link](PAGE.md#anchor), names a page and a section that exist; a page's own
  '"Section" below' (or above) names a section of that page on that side.
* Command lines: every flag of every ``actdict`` command and ``python -m actdict...`` entry point appears in
  a docs section whose heading names the command or in a paragraph naming it, and a default its own section
  states is the parser's (read from the argparse parsers the commands build, so however they are built);
  and every command line the docs show (a code block's, a synopsis, a whole command in a code span) is one
  its command's parser takes.

YAML examples in the docs set values other than the defaults on purpose, so they are not read as defaults;
each is checked as a config instead.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib
import io
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from actdict import config as actdict_config
from actdict.analyze.config import AnalyzeConfig
from actdict.config import Common, safe_yaml
from actdict.harvest.config import HarvestConfig
from actdict.harvest.embed import EmbedConfig
from actdict.harvest.sources import SourceConfig
from actdict.harvest.vectors import VectorsConfig
from actdict.train.config import MAX_SWEEP, SWEPT, DictConfig, TrainConfig
from actdict.train.protocol import param_defaults, registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
        for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}

# each config dataclass -> the page a researcher looks its keys up on, and the heading under which its
# defaults are stated where one page holds two sections of the same keys (embed's and vectors' `hook`)
SECTIONS: list[tuple[type, str, str, str]] = [
    (Common, "top level", "README.md", ""),
    (HarvestConfig, "harvest", "docs/harvest.md", ""),
    (SourceConfig, "harvest.source", "docs/harvest.md", "Text sources"),
    (EmbedConfig, "harvest.embed", "docs/embeddings.md", "harvest.mode: embeddings"),
    (VectorsConfig, "harvest.vectors", "docs/embeddings.md", "harvest.mode: vectors"),
    (TrainConfig, "train", "docs/training.md", ""),
    (DictConfig, "train.dicts[]", "docs/training.md", ""),
    (AnalyzeConfig, "analyze", "docs/analyze.md", ""),
]

# fields whose default no page states, each with why (a nested section's default is its own fields')
NO_DEFAULT_STATED = {
    ("harvest", "source"): "a section of its own (harvest.source), each field's default on its page",
    ("harvest", "embed"): "a section of its own (harvest.embed)",
    ("harvest", "vectors"): "a section of its own (harvest.vectors)",
}


def code_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default (its factory's value), or MISSING for a required field."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def words(text: str) -> str:
    """``text`` with its code spans and code blocks only: where a page names keys."""
    spans = re.findall(r"```.*?```|`[^`\n]+`", text, flags=re.S)
    return "\n".join(spans)


def named(key: str, text: str) -> bool:
    """``key`` is named in a code span or block of ``text`` (alone, dotted or as ``key: value``)."""
    return re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", words(text)) is not None


def literal(said: str) -> Any:
    """A default as a page writes it (``4,096``, ``1e-06``, ``null``, ``""``, ``1/32``) as a value."""
    said = said.strip().strip("`").strip()
    if re.fullmatch(r"-?\d+/\d+", said):
        return float(Fraction(said))
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", said):
        said = said.replace(",", "")
    return safe_yaml(said, "a default in the docs")


def same(doc: Any, code: Any) -> bool:
    """The page's default is the code's (numbers to 1e-12, a tuple as a list, a dataclass list by name)."""
    if isinstance(code, bool) or isinstance(doc, bool):
        return doc is code
    if isinstance(code, int | float) and isinstance(doc, int | float):
        return math.isclose(doc, code, rel_tol=1e-12, abs_tol=0)
    if isinstance(code, tuple | list) and isinstance(doc, list):
        return len(doc) == len(code) and all(same(d, c) for d, c in zip(doc, code, strict=True))
    return doc == code


def table_defaults(text: str) -> dict[str, list[str]]:
    """``key -> [default as written, ...]`` from every table of ``text`` with a ``field`` and a ``default``
    column; a row of several keys (`` `name`, `split` ``) gives each its value (``a, b``) in order."""
    out: dict[str, list[str]] = {}
    for table in re.findall(r"(?m)(?:^\|.*\|\n)+", text):
        rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table.splitlines()]
        head = [c.strip("` ").lower() for c in rows[0]]
        if "field" not in head or "default" not in head:
            continue
        fi, di = head.index("field"), head.index("default")
        for row in rows[2:]:
            keys = re.findall(r"`([\w.]+)`", row[fi])
            values = [row[di]] if len(keys) == 1 else [v.strip() for v in row[di].split(", ")]
            if len(values) == len(keys):
                for k, v in zip(keys, values, strict=True):
                    out.setdefault(k.rsplit(".", 1)[-1], []).append(v)
    return out


def prose_defaults(text: str) -> dict[str, list[str]]:
    """``key -> [default as written, ...]`` from "`key` (default X" in running text (X a code span or a
    word), the key possibly dotted (`train.eta_min`)."""
    out: dict[str, list[str]] = {}
    for key, value in re.findall(r"`(?:[\w]+\.)*(\w+)` \(default:? (`[^`]*`|[^\s,;:)]+)", text):
        out.setdefault(key, []).append(value)
    return out


def part(text: str, heading: str) -> str:
    """The part of a page under its heading that begins ``heading`` (code marks aside), up to the next
    heading of the same level or above; the whole page for ''."""
    if not heading:
        return text
    heads = list(re.finditer(r"(?m)^(#+) (.+)$", text))
    start = next(h for h in heads if h.group(2).replace("`", "").startswith(heading))
    level = len(start.group(1))
    end = next((h.start() for h in heads if h.start() > start.start() and len(h.group(1)) <= level),
               len(text))
    return text[start.start():end]


def stated_defaults(text: str) -> dict[str, list[str]]:
    """``key -> [default as written, ...]`` of the tables and the prose of ``text``."""
    out: dict[str, list[str]] = {}
    for found in (table_defaults(text), prose_defaults(text)):
        for k, vs in found.items():
            out.setdefault(k, []).extend(vs)
    return out


def config_findings() -> list[str]:
    """What the pages miss or misstate of the config dataclasses, one line each."""
    bad = []
    for cls, section, page, heading in SECTIONS:
        stated = stated_defaults(part(DOCS[page], heading))
        pages = (f"{page}, {heading!r}" if heading else page,)
        for f in dataclasses.fields(cls):
            default = code_default(f)
            if not named(f.name, DOCS[page]):
                bad.append(f"{section}.{f.name}: not named in {page}")
                continue
            if default is dataclasses.MISSING or (section, f.name) in NO_DEFAULT_STATED:
                continue
            if dataclasses.is_dataclass(default) or (isinstance(default, list) and default
                                                     and dataclasses.is_dataclass(default[0])):
                said = stated.get(f.name, [])
                ok = any(_names_dicts(s, default) for s in said)
                if not ok:
                    bad.append(f"{section}.{f.name}: default {default!r} not stated in {', '.join(pages)}")
                continue
            said = stated.get(f.name)
            if not said:
                bad.append(f"{section}.{f.name}: no default stated in {', '.join(pages)} (code: {default!r})")
            for s in said or []:
                try:
                    value = literal(s)
                except Exception:  # noqa: BLE001 - a default the page words is a finding, not a crash
                    bad.append(f"{section}.{f.name}: default {s!r} in the docs is not a value")
                    continue
                if not same(value, default):
                    bad.append(f"{section}.{f.name}: the docs say default {s}, the code {default!r}")
    return bad


def _names_dicts(said: str, default: list) -> bool:
    """``train.dicts``' default as a page states it: each default dictionary named with its variant."""
    return all(d.name in said and d.variant in said for d in default)


def test_every_config_key_is_documented_with_the_codes_default():
    assert config_findings() == []


# keys a '| field | default |' table states that are no dataclass' field, each with why
NOT_A_FIELD = {("docs/training.md", "sweep"): "a train.dicts item's key, expanded before DictConfig is built"}


def stale_findings() -> list[str]:
    """Keys a '| field | default |' table of a config page states a default for that no config dataclass of
    that page has (a field renamed or removed in the code, its row left behind), one line each."""
    fields: dict[str, set[str]] = {}
    for cls, _, page, _ in SECTIONS:
        fields.setdefault(page, set()).update(f.name for f in dataclasses.fields(cls))
    return [f"{page}: a default stated for `{key}`, which is no config field of this page"
            for page, names in fields.items() for key in table_defaults(DOCS[page])
            if key not in names and (page, key) not in NOT_A_FIELD]


def test_no_table_states_a_default_for_a_key_the_code_lacks():
    assert stale_findings() == []


def test_sweeps_are_documented_as_the_code_expands_them():
    text = DOCS["docs/training.md"]
    sweeps = text[text.index("**Sweeps.**"):text.index("**Before a long run")]
    assert [k for k in (*SWEPT, "params") if not named(k, sweeps)] == []
    assert f"at most {MAX_SWEEP:,}" in sweeps


def variant_rows(text: str) -> dict[str, str]:
    """docs/variants.md's params table: ``variant -> the row's params cell`` (rows naming several variants,
    `` `vaease`, `vae` ``, give each one)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`") and cells[1].startswith("params:"):
            for name in re.findall(r"`(\w+)`", cells[0]):
                out[name] = cells[1]
    return out


def variant_findings() -> list[str]:
    """What docs/variants.md misses or misstates of the params ``actdict variants`` lists."""
    text = DOCS["docs/variants.md"]
    rows = variant_rows(text)
    bad = []
    for name, cls in sorted(registry().items()):
        if not cls.__module__.startswith("actdict."):
            continue  # an installed plugin's, not ours to document
        params = {**param_defaults(cls), **getattr(cls, "optional_params", {})}
        if name not in rows:
            bad.append(f"{name}: no row 'params: ...' in docs/variants.md's params table")
            continue
        said = dict(re.findall(r"(\w+)=(`[^`]*`|'[^']*'|[^\s,;]+)", rows[name]))
        for p, default in params.items():
            if p not in said:
                bad.append(f"{name}.{p}: not in docs/variants.md's params table (code: {default!r})")
            elif not same(literal(said[p].strip("'")), default):
                bad.append(f"{name}.{p}: docs/variants.md says {said[p]}, the code {default!r}")
        bad += [f"{name}.{p}: in docs/variants.md's params table, not a param"
                for p in said if p not in params]
    return bad


def test_every_variant_param_is_documented_with_the_codes_default():
    assert variant_findings() == []


def yaml_examples() -> list[tuple[str, dict]]:
    """Every ```yaml block of the docs, as data (a list of dictionaries alone as the train section's)."""
    out = []
    for where, text in DOCS.items():
        for block in re.findall(r"```ya?ml\n(.*?)```", text, flags=re.S):
            data = safe_yaml(block, where)
            out.append((where, {"train": data} if set(data) == {"dicts"} else data))
    return out


def test_every_yaml_example_is_a_valid_config():
    """A reader copies them: each section an example sets is built and checked as a config file's is."""
    stages = {"harvest": HarvestConfig, "train": TrainConfig, "analyze": AnalyzeConfig}
    examples = yaml_examples()
    assert len(examples) >= 4
    for where, data in examples:
        assert set(data) <= {f.name for f in dataclasses.fields(Common)} | set(stages), where
        actdict_config.common_of(data)
        for stage in set(data) & set(stages):
            actdict_config.section(data, stage, stages[stage])


# ---- cross-references --------------------------------------------------------------------------------------

CODE_DIRS = ("actdict", "harvest", "train", "analyze", "benchmarks")


def code_text(path: Path) -> str:
    """A source file's text with adjacent string literals joined (``"... 'Your own " "variant'"``) and each
    line break and its indentation read as one space: a citation wrapped over lines reads as one."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(['\"])\s*\n\s*(?:[rf]{0,2})\1", "", text)
    return re.sub(r"\s*\n\s*(?:#\s*)?", " ", text)


def md_text(text: str) -> str:
    """A page's text with its lines joined (a citation wraps over lines)."""
    return re.sub(r"\s*\n\s*", " ", text)


PAGES = {Path(name).stem for name in DOCS if name.startswith("docs/")}
CITE = re.compile(r"(?:(?:docs/)?(\w+)\.md|(README))\)?,? (?:\"([^\"]{2,80})\"|'([^']{2,80})'|(E\d+)\b"
                  r"|([A-Z][\w ,'-]{2,80}?)(?=\)))")  # "PAGE.md, 'S'", "PAGE.md, E31", "(PAGE.md, S)"


def sections(text: str) -> list[str]:
    """A page's headings and its paragraphs' bold titles (``**Sweeps.**``), as written."""
    heads = re.findall(r"(?m)^#+ (.+)$", text)
    titles = [t.rstrip(".") for t in re.findall(r"(?m)^\*\*([^*]+)\*\*", text)]
    return heads + titles


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, code marks and punctuation dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def cites(section: str, page: str) -> bool:
    """``section`` is a heading or bold title of ``page`` (or begins one: "On a GPU"), or an entry of
    docs/results.md's log (E31)."""
    text = DOCS.get(f"docs/{page}.md") or DOCS.get(f"{page}.md") or ""
    if not text:
        return False
    if re.fullmatch(r"E\d+", section):
        return re.search(rf"\({section}\b", text) is not None
    return any(h.replace("`", "").startswith(section.replace("`", "")) for h in sections(text))


@functools.cache
def citations() -> list[tuple[str, str, str]]:
    """Every (where, page, section) cited in the code and the docs."""
    found = []
    sources = [(p.relative_to(ROOT).as_posix(), code_text(p)) for d in CODE_DIRS
               for p in sorted((ROOT / d).rglob("*.py"))]
    sources += [(name, md_text(text)) for name, text in DOCS.items()]
    for where, text in sources:
        for m in CITE.finditer(text):
            page = m.group(1) or m.group(2)
            section = next(g for g in m.groups()[2:] if g)
            found.append((where, page, section if page == "README" or page in PAGES else "(no such page)"))
    return found


def test_every_cited_section_exists():
    bad = [f"{where}: {page}.md, {section!r}" for where, page, section in citations()
           if not cites(section, page)]
    assert bad == []


def test_the_citations_are_found():
    """The finder finds the forms the code and the docs use (a finder that finds none passes anything)."""
    found = {(page, section) for _, page, section in citations()}
    assert {("variants", "Your own variant"), ("results", "E31"), ("training", "Sweeps"),
            ("analyze", "Two dictionaries across run folders")} <= found


IN_PAGE = re.compile(r"""(?:"([^"]{2,80})"|'([^'\s][^']{1,79})'),? (below|above)\b"""
                     r"""|\b(below|above) \((?:"([^"]{2,80})"|'([^']{2,80})')\)""")
"""A page's reference to a section of its own: '"Growing a store" below', 'below ("On a GPU")'."""


def headed_at(text: str) -> list[tuple[int, str]]:
    """(offset in ``md_text(text)``, heading or bold title) of each of a page's ``sections``, in order."""
    found = [(m.start(), m.group(1)) for m in re.finditer(r"(?m)^#+ (.+)$", text)]
    found += [(m.start(), m.group(1).rstrip(".")) for m in re.finditer(r"(?m)^\*\*([^*]+)\*\*", text)]
    return sorted((len(md_text(text[:at])), name) for at, name in found)


def page_references(text: str) -> list[tuple[str, str, bool | None]]:
    """Every (section, 'below' / 'above', whether it is there) page ``text`` names with below or above:
    there, a heading or bold title of the page that begins ``section`` on that side of the reference; None
    where the page has no such section at all."""
    heads, found = headed_at(text), []
    for m in IN_PAGE.finditer(md_text(text)):
        section = next(g for g in (m.group(1), m.group(2), m.group(5), m.group(6)) if g)
        way = m.group(3) or m.group(4)
        at = [a for a, h in heads if h.replace("`", "").startswith(section.replace("`", ""))]
        found.append((section, way, any(a > m.start() if way == "below" else a < m.start() for a in at)
                      if at else None))
    return found


@functools.cache
def in_page_references() -> list[tuple[str, str, str, bool | None]]:
    """``page_references`` of every page, each with its page."""
    return [(where, *ref) for where, text in DOCS.items() for ref in page_references(text)]


def test_every_section_named_below_or_above_is_there():
    """A section a page names with 'below' / 'above' is a heading or bold title of that page, on that side:
    a renamed or moved section left the reference pointing at nothing."""
    bad = [f"{where}: {section!r} {way} " + ("(no such section on the page)" if there is None else
                                             f"(it is {'above' if way == 'below' else 'below'})")
           for where, section, way, there in in_page_references() if not there]
    assert bad == []


def test_the_in_page_references_are_found():
    """The finder finds both forms the docs use (a finder that finds none passes anything)."""
    found = {(where, section, way) for where, section, way, _ in in_page_references()}
    assert {("docs/harvest.md", "Growing a store", "below"), ("docs/training.md", "Sweeps", "above"),
            ("docs/harvest.md", "On a GPU", "below")} <= found
    page = ('# Alpha\nsee "Gone" below, "Alpha" below, "Beta" above, below ("Beta").\n\n**Gamma.** x\n'
            '## Beta\n"Gamma" above')
    assert page_references(page) == [("Gone", "below", None), ("Alpha", "below", False),  # none; the other
                                     ("Beta", "above", False), ("Beta", "below", True),  # side; there
                                     ("Gamma", "above", True)]


def test_every_link_names_a_file_and_a_heading_that_exist():
    """Each relative [link](PATH) of the docs names a file of the repository, and a PAGE.md#anchor one of
    the page's headings (as GitHub makes anchors of them)."""
    bad = []
    for where, text in DOCS.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path, _, frag = target.partition("#")
            page = (ROOT / where).parent / path
            if not page.exists():
                bad.append(f"{where}: {target} (no such file)")
            elif frag and frag not in [anchor(h) for h in re.findall(r"(?m)^#+ (.+)$",
                                                                     page.read_text(encoding="utf-8"))]:
                bad.append(f"{where}: {target} (no such heading)")
    assert bad == []


def test_anchors_are_githubs():
    assert anchor("Several processes (torchrun)") == "several-processes-torchrun"
    assert anchor("`harvest.mode: vectors` and `python -m actdict.harvest.vectors`") == \
        "harvestmode-vectors-and-python--m-actdictharvestvectors"


# ---- command lines -----------------------------------------------------------------------------------------

def parsers_of(run, argv: list[str], monkeypatch) -> list[argparse.ArgumentParser]:
    """Every parser ``run(argv + ["--help"])`` builds before its help ends it (a command's, its
    subcommands', one built once the command is known), however the command builds them."""
    made = []
    init = argparse.ArgumentParser.__init__

    def recording(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", recording)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        run([*argv, "--help"])
    monkeypatch.undo()
    assert made, f"{argv}: no parser"
    return made


def flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands' parsers, but ``-h``/``--help``."""
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= flags(sub)
        elif not isinstance(action, argparse._HelpAction):
            out |= {s for s in action.option_strings if s.startswith("--")}
    return out


def entry_points() -> dict[str, Any]:
    """``python -m MODULE``'s function for every module of actdict that runs as one (``run_command(F)``)."""
    out = {}
    for d in ("harvest", "train", "analyze"):
        for p in sorted((ROOT / d).glob("*.py")):
            tree = ast.parse(p.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "run_command"
                        and node.args and isinstance(node.args[0], ast.Name)):
                    module = importlib.import_module(f"actdict.{d}.{p.stem}")
                    out[f"actdict.{d}.{p.stem}"] = getattr(module, node.args[0].id)
    return out


def units(part: str) -> list[str]:
    """A section's paragraphs (blank-line separated), each table row and code-block line one of its own: a
    README table or example block names every command, each row or line one."""
    out = []
    for para in re.split(r"\n\s*\n", part):
        lines = para.split("\n")
        table = all(line.startswith("|") for line in lines if line.strip())
        out += lines if table or para.lstrip().startswith("```") else [para]
    return out


def sections_naming(command: str) -> str:
    """Where ``command``'s flags are looked up (``actdict compare``, ``python -m actdict.harvest.vectors``;
    wrapped over lines or not): every section of the docs whose heading names it, and elsewhere every
    paragraph (``units``) that does. Every section naming it let a flag pass that only another command's
    text there named: ``actdict lens --verify`` was documented by README's section of every tool."""
    out = []
    for text in DOCS.values():
        for part in re.split(r"(?m)^(?=#)", text):
            if command in part.split("\n", 1)[0]:
                out.append(part)
            else:
                out += [u for u in units(part) if command in re.sub(r"\s*\n\s*", " ", u)]
    return "\n".join(out)


def command_parsers(monkeypatch) -> dict[str, list[argparse.ArgumentParser]]:
    """Each ``actdict`` command and ``python -m`` entry point, by the name it gives itself (``actdict
    compare`` is analyze.pair's), with the parsers it builds."""
    from actdict import cli

    commands = ["harvest", "train", "analyze", "run", "export", "import", "store", "lens", "compare",
                "summary", "feature", "variants"]
    found = {f"actdict {c}": parsers_of(cli.main, [c], monkeypatch) for c in commands}
    for run in entry_points().values():
        made = parsers_of(run, [], monkeypatch)
        found.setdefault(made[0].prog, made)
    return found


@pytest.fixture(scope="module")
def parsers() -> dict[str, list[argparse.ArgumentParser]]:
    """``command_parsers``, built once for the tests below."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return command_parsers(monkeypatch)


def test_every_flag_is_documented_where_its_command_is(parsers):
    found = {c: set().union(*map(flags, ps)) for c, ps in parsers.items()}
    every = set().union(*found.values())
    assert len(found) >= 15 and {"--dry-run", "--verify", "--check", "--rebuild"} <= every
    where = {c: sections_naming(c) for c in found}
    bad = sorted(f"{c} {f}" for c, fs in found.items() for f in fs
                 if re.search(rf"{re.escape(f)}(?![\w-])", where[c]) is None)
    assert bad == []


def flag_default_findings(parsers: dict[str, list[argparse.ArgumentParser]]) -> list[str]:
    """Each flag default a command's own section states ("`--top` (8)", "`--rows`, 65,536"; the section
    whose heading names the command: three commands share --top) that is not its parser's."""
    bad = []
    for command, made in parsers.items():
        parts = [p for text in DOCS.values() for p in re.split(r"(?m)^(?=#)", text)
                 if command in p.split("\n", 1)[0]]
        for action in (a for p in made for a in p._actions):
            for flag in (f for f in action.option_strings if f.startswith("--")):
                for said in re.findall(rf"`{re.escape(flag)}(?: [A-Z_=]+)?`,? \(?(`[^`]+`|\d[\d,.]*\d|\d)",
                                       "\n".join(parts)):
                    if not same(literal(said), action.default):
                        bad.append(f"{command} {flag}: the docs say {said}, the parser {action.default!r}")
    return bad


def test_flag_defaults_are_the_parsers(parsers):
    assert flag_default_findings(parsers) == []


def layout_findings() -> list[str]:
    """Each module of actdict/, harvest/, train/, analyze/ and benchmarks/ (and train/variants/ as a whole)
    not named in the README's Layout block, under its folder's entry: a module added without a word there
    (files, lock, signals, rng, added, tokentext, ddp_check, the config modules were not)."""
    block = part(DOCS["README.md"], "Layout").split("```")[1]
    entries = dict(re.findall(r"(?ms)^(\w+)/ +(.*?)(?=^\w+/ |\Z)", block))
    bad = []
    for folder in ("actdict", "harvest", "train", "analyze", "benchmarks"):
        said = entries.get(folder, "")
        for f in sorted((ROOT / folder).iterdir()):
            name = f.name.removesuffix(".py")
            if name.startswith("__") or not (f.suffix in (".py", ".sh") or f.is_dir() and name == "variants"):
                continue
            shown = f.name if f.suffix == ".sh" else name
            if re.search(rf"(?<![\w.]){re.escape(shown)}(?![\w])", said) is None:
                bad.append(f"{folder}/{f.name}")
    return bad


def test_every_module_is_named_in_the_readmes_layout():
    assert layout_findings() == []



COMMAND = re.compile(r"(?:\.venv/bin/)?(actdict(?= )|python -m actdict\.[\w.]+)")


def shown_commands(line: str) -> list[str]:
    """The ``actdict ...`` and ``python -m actdict...`` commands of one shell line or synopsis, each from its
    command word to the end of its part of the line (``a && b``, ``a | tee``, ``for ...; do b``: b alone),
    a ``#`` comment dropped; a synopsis' optional ``[X ...]`` repeats dropped, its ``[--flag V]`` read as
    given and ``a|b`` as a (outside quotes); a line that shows a command's output (``actdict: ...``) or
    elides its arguments (``actdict harvest ... --dry-run``) is none."""
    quoted: list[str] = []

    def hide(m: re.Match) -> str:
        quoted.append(m.group(0))
        return f"\0{len(quoted) - 1}\0"

    line = re.sub(r"'[^']*'|\"[^\"]*\"", hide, line.strip().removeprefix("$ "))
    line = re.sub(r"\s+#\s.*$", "", line)
    out = []
    for cmd in re.split(r"\s*(?:&&|\|\||;|\s\|\s|\bdo\b)\s*", line):
        if not (m := COMMAND.match(cmd)) or re.search(r"(?<!\S)\.\.\.(?!\S)|^actdict:", cmd[m.start(1):]):
            continue
        cmd = re.sub(r"\s*\[[^][]*\.\.\.\]", "", cmd[m.start(1):]).replace("[", "").replace("]", "")
        cmd = re.sub(r"(?<=\S)\|\S+", "", cmd).rstrip(" \\")
        out.append(re.sub(r"\0(\d+)\0", lambda m: quoted[int(m.group(1))], cmd))
    return out


def doc_commands() -> list[tuple[str, str]]:
    """(page, command) of every command the docs show: each line of a code block (a line ending in ``\\``
    joined with the next) and each code span of the prose that is a whole command, in ``shown_commands``'
    sense (``actdict feature`` alone names the command, and runs nothing)."""
    found = []
    for where, text in DOCS.items():
        for block in re.findall(r"(?ms)^```[\w-]*\n(.*?)^```", text):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                found += [(where, c) for c in shown_commands(line)]
        prose = md_text(re.sub(r"(?ms)^```.*?^```", "", text))
        for span in re.findall(r"`([^`]+)`", prose):
            found += [(where, c) for c in shown_commands(span) if len(c.split()) > (3 if " -m " in c else 2)]
    return found


class Refused(Exception):
    """argparse's error for a command line the docs show."""


def refuse(message: str) -> None:
    """A parser's ``error``: the message as an exception, not a usage line and exit 2."""
    raise Refused(message)


def parse_findings(parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """Each command the docs show that its command's parser refuses (a flag renamed or removed, a positional
    argument too many or missing, a value its ``choices`` lack), or whose command does not exist."""
    import shlex

    bad = []
    for where, command in doc_commands():
        words = [re.sub(r"^[A-Z]$", "1", w) for w in shlex.split(command)]  # a synopsis' N, I: a number
        n = 3 if words[0] == "python" else 2
        if (parser := parsers.get(" ".join(words[:n]))) is None:
            bad.append(f"{where}: {command}: no such command")
            continue
        parser.error = refuse
        try:
            parser.parse_intermixed_args(words[n:])
        except Refused as e:
            bad.append(f"{where}: {command}: {e}")
    return bad


def test_every_command_the_docs_show_parses(parsers, monkeypatch):
    """A reader copies the commands: each one the docs show (README's block, a guide's example, a synopsis)
    is one its command's parser takes: each ``actdict`` command's first parser (a stage's own), and
    ``python -m MODULE``'s by its module (``actdict.train.export`` calls itself ``actdict export``)."""
    by_name = {c: ps[0] for c, ps in parsers.items()}
    by_name |= {f"python -m {m}": parsers_of(run, [], monkeypatch)[0] for m, run in entry_points().items()}
    commands = doc_commands()
    assert len(commands) >= 60 and len({c.split()[1] for _, c in commands}) >= 12
    assert parse_findings(by_name) == []


def test_shown_commands_reads_shell_lines_and_synopses():
    assert shown_commands("$ actdict run X --dry-run && actdict run X   # both") == \
        ["actdict run X --dry-run", "actdict run X"]
    assert shown_commands(".venv/bin/pip install -e . && .venv/bin/actdict run configs/demo.yaml") == \
        ["actdict run configs/demo.yaml"]
    synopsis = "python -m actdict.harvest.vectors F S [--key K] [--dtype float32|float16]"
    assert shown_commands(synopsis) == ["python -m actdict.harvest.vectors F S --key K --dtype float32"]
    assert shown_commands("actdict feature D I [I ...]") == ["actdict feature D I"]
    assert shown_commands("actdict run c.yaml 'x={a: [1, 2]}' --dry-run") == \
        ["actdict run c.yaml 'x={a: [1, 2]}' --dry-run"]
    assert shown_commands("actdict harvest ... --dry-run") == shown_commands("actdict: ModelError: x") == []


def test_a_shown_store_hash_is_its_configs():
    """A dry run the docs show names the demo store's config hash as the harvest prints it: that of
    configs/demo.yaml's harvest section (the same store as demo_sweep.yaml's), which a new harvest field
    changes (docs/training.md showed an old one)."""
    from actdict.config import load_experiment, section
    from actdict.config_data import config_hash

    said = r"store runs/demo/store is already complete for this config \(config hash (\w+)\)"
    shown = [(where, h) for where, text in DOCS.items() for h in re.findall(said, text)]
    assert shown
    data = load_experiment(str(ROOT / "configs/demo.yaml"), [])
    demo = config_hash(section(data, "harvest", HarvestConfig))
    assert [(where, h) for where, h in shown if h != demo] == []
