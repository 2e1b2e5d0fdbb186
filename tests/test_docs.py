"""The docs stay true: commands parse, links and paths resolve, every config key is documented,
and nothing users read speaks of how `mt` was made."""
from __future__ import annotations

import dataclasses
import re
import shlex
import sys
import typing
from pathlib import Path

import pytest

from mt import config as C
from mt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
CODE = sorted((ROOT / "mt").rglob("*.py"))
SCRIPTS = sorted(p for p in (ROOT / "scripts").rglob("*") if p.is_file() and p.suffix in (".py", ".sh"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def text_lines(paths):
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            yield path, number, line


# -- links, paths and figures ---------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]+src=\"([^\"]+)\"")
# a repository path written in prose or code: mt/..., scripts/..., configs/..., docs/..., tests/...
REPO_PATH = re.compile(r"(?<![\w./~$-])((?:mt|scripts|configs|docs|tests)/[\w./{},*<>-]*[\w/}*>])")


def expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [p for choice in match.group(1).split(",")
            for p in expand_braces(path[:match.start()] + choice + path[match.end():])]


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S),
                              re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def broken_links(paths) -> list[str]:
    broken = []
    for path, number, line in text_lines(paths):
        for match in LINK.finditer(line):
            target, _, anchor = (match.group(1) or match.group(2)).partition("#")
            if re.match(r"[a-z]+:", target):  # a URL
                continue
            page = path.parent / target if target else path
            if not page.exists():
                broken.append(f"{rel(path)}:{number}: link {target}")
            elif anchor and page.suffix == ".md" and anchor not in anchors(page):
                broken.append(f"{rel(path)}:{number}: link {target}#{anchor}")
    return broken


def missing_paths(paths, prefixes=("mt", "scripts", "configs", "docs", "tests")) -> list[str]:
    missing = []
    for path, number, line in text_lines(paths):
        for match in REPO_PATH.finditer(line):
            if match.group(1).split("/")[0] not in prefixes:
                continue
            for candidate in expand_braces(re.sub(r"<[^<>]*>", "*", match.group(1).rstrip(".,"))):
                if not any(ROOT.glob(candidate)) if "*" in candidate else not (ROOT / candidate).exists():
                    missing.append(f"{rel(path)}:{number}: {candidate}")
    return missing


def test_relative_links_and_figures_resolve():
    assert broken_links(DOCS) == []


def test_repository_paths_in_docs_and_configs_exist():
    assert missing_paths(DOCS + CONFIGS) == []


def test_code_points_only_at_docs_that_exist():
    assert missing_paths(CODE + SCRIPTS, prefixes=("docs",)) == []


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("# A title: `mt x [y]`\n\nSee [the guide](docs/nope.md), ![fig](figures/x.png), "
                    "`scripts/bench/none.py`, configs/multi30k_{de,fr}_en.yaml, tests/test_<module>.py, "
                    "configs/*.yaml, [web](https://example.org/mt/x.py), [here](#a-title-mt-x-y) "
                    "and [there](#nowhere).\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "multi30k_de_en.yaml").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    assert broken_links([page]) == ["page.md:3: link docs/nope.md", "page.md:3: link figures/x.png",
                                    "page.md:3: link #nowhere"]
    assert missing_paths([page]) == ["page.md:3: docs/nope.md", "page.md:3: scripts/bench/none.py",
                                     "page.md:3: configs/multi30k_fr_en.yaml"]


# -- commands shown in the README ----------------------------------------------------------------

def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def readme_commands() -> list[list[str]]:
    """Every `mt ...` command (also after `torchrun ... -m`) in the README's bash blocks and inline code, as argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for block in code_blocks(ROOT / "README.md", "bash")
             for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`((?:mt|torchrun) [^`]+)`", re.sub(r"```.*?```", "", readme, flags=re.S))
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        if "-m" in words and words[0] in ("torchrun", "python"):
            words = words[words.index("-m") + 1:]
        if words[:1] == ["mt"] and len(words) > 1:
            commands.append(words[1:])
    return commands


def test_readme_shows_commands():
    verbs = {argv[0] for argv in readme_commands()}
    assert {"train", "translate", "evaluate", "data"} <= verbs


@pytest.mark.parametrize("argv", readme_commands(), ids=" ".join)
def test_readme_command_parses(argv):
    """Each command's verb and options are ones `mt` accepts, and its --help works."""
    if len(argv) > 1:  # a bare `mt VERB` in prose names the verb; its --help is checked below
        assert build_parser().parse_args(argv).verb == argv[0]
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([argv[0], "--help"])
    assert exit_.value.code == 0


def test_readme_python_compiles():
    for block in code_blocks(ROOT / "README.md", "python"):
        compile(block, "README.md", "exec")


# -- docs/config.md == mt/config.py -------------------------------------------------------------

def render_type(t) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Literal:
        return ", ".join(f"`{a}`" for a in args)
    if origin is typing.Union:
        return " or ".join(render_type(a) for a in args)
    if origin is list:
        return f"list of {render_type(args[0])}"
    names = {int: "int", float: "float", bool: "bool", str: "string", list: "list", type(None): "null",
             C.Corpus: "corpus"}
    return names[t]


def render_default(field) -> str:
    value = field.default_factory() if field.default is dataclasses.MISSING else field.default
    if dataclasses.is_dataclass(value):
        return "(a corpus)"
    if isinstance(value, bool) or value is None:
        return {True: "`true`", False: "`false`", None: "`null`"}[value]
    if isinstance(value, list):
        return "`[" + ", ".join(map(str, value)) + "]`"
    return '`""`' if value == "" else f"`{value}`"


def config_keys(cls=C.Config, prefix="") -> dict[str, tuple[str, str]]:
    """{dotted key: (type, default)} for every key a config file can set."""
    keys, hints = {}, typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name, kind = prefix + field.name, hints[field.name]
        if dataclasses.is_dataclass(kind) and kind is not C.Corpus:
            keys.update(config_keys(kind, name + "."))
            continue
        keys[name] = (render_type(kind), render_default(field))
        if name == "data.train":  # a corpus's own keys, documented once (valid and test take the same)
            keys.update(config_keys(C.Corpus, name + "."))
    return keys


def documented_keys(text: str) -> dict[str, tuple[str, str]]:
    rows = re.findall(r"^\| `([\w.]+)` \| (.+?) \| (.+?) \| (.+?) \|$", text, re.M)
    assert all(meaning.strip() for *_, meaning in rows)
    return {key: (kind, default) for key, kind, default, _ in rows}


def test_config_md_documents_every_key_with_its_type_and_default():
    documented = documented_keys((ROOT / "docs" / "config.md").read_text(encoding="utf-8"))
    actual = config_keys()
    assert sorted(set(actual) - set(documented)) == [], "keys in mt/config.py missing from docs/config.md"
    assert sorted(set(documented) - set(actual)) == [], "keys in docs/config.md that mt/config.py lacks"
    assert {k: v for k, v in documented.items() if actual[k] != v} == {}, "type or default differs"


def test_config_check_fails_on_an_undocumented_key():
    @dataclasses.dataclass
    class Extra(C.Config):
        new_key: int = 3

    documented = documented_keys((ROOT / "docs" / "config.md").read_text(encoding="utf-8"))
    assert set(config_keys(Extra)) - set(documented) == {"new_key"}


# -- no history in what users read ----------------------------------------------------------------

HISTORY = re.compile(
    r"\bstops? \d+"                       # lab-notebook entries
    r"|\bissues? #?\d+|\(#\d+\)|\bPR #?\d+"  # tracker numbers
    r"|\b20\d\d-\d\d-\d\d\b"               # dated entries
    r"|\b(?:a later|an earlier|later|earlier|previous|that|development|working|lab) sessions?\b"
    r"|\bthe lead\b|\bhelpers? (?:agent|session)"
    r"|\b(?:an? )?(?:earlier|previous|older) (?:version|commit)s?\b"
    r"|\btoday's code\b|\bnow the recipe\b",
    re.I)


def history(paths) -> list[str]:
    return [f"{rel(path)}:{number}: {match.group(0)!r}"
            for path, number, line in text_lines(paths) for match in HISTORY.finditer(line)]


def test_docs_configs_and_code_do_not_speak_of_how_mt_was_made():
    assert history(DOCS + CONFIGS + CODE) == []


@pytest.mark.parametrize("line", ["as measured in stop 12", "Issue #14 on a Xeon", "(2026-11-28)",
                                  "a later session", "0.95x in an earlier version"])
def test_history_check_catches(tmp_path, monkeypatch, line):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "x.md").write_text(f"fine\n{line}\n")
    assert len(history([tmp_path / "x.md"])) == 1
