"""The guided tour (docs/transformer.md, docs/transformer.zh.md) stays true to the code.

Every code reference (file and name) must exist, every figure must be one ``mt figures``
writes (and be committed), the two languages must agree section for section, and every
runnable check must pass on a tiny trained model.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from mt.figures import BY_NAME, FIGURES

ROOT = Path(__file__).resolve().parent.parent
TOURS = [ROOT / "docs" / "transformer.md", ROOT / "docs" / "transformer.zh.md"]
# [`mt/model.py` `attention_weights`](../mt/model.py#L42): a file, a (dotted) name in it, the line defining it
CODE_REF = re.compile(r"\[`(mt/[\w/]+\.py)`(?: `([\w.]+)`)?\]\(\.\./(mt/[\w/]+\.py)(?:#L(\d+))?\)")
ANY_PY_PATH = re.compile(r"\bmt/[\w/]+\.py\b")
FIGURE_REF = re.compile(r"!\[[^\]]*\]\(figures/(?:zh/)?([\w.-]+)\)")  # the Chinese tour's are in figures/zh
CHECK = re.compile(r"```python\n(run_dir = .*?)```", re.S)
RUN_DIR_LINE = re.compile(r'\Arun_dir = "[^"]*"[^\n]*\n')


def definition_lines(path: Path) -> dict[str, int]:
    """Top-level functions, classes and assignments, and ``Class.member`` for class bodies: the
    line of each one's ``def``, ``class`` or ``NAME =`` (what a link's ``#L`` anchor points at)."""
    lines = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lines[node.name] = node.lineno  # the def/class line, below any decorator
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        lines[f"{node.name}.{member.name}"] = member.lineno
                    elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                        lines[f"{node.name}.{member.target.id}"] = member.lineno
        elif isinstance(node, ast.Assign):
            for target in node.targets:  # NAME = ... and A, B = ...
                lines.update((t.id, node.lineno) for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines[node.target.id] = node.lineno
    return lines


def anchored(text: str) -> str:
    """``text`` with every code link's ``#L`` anchor set to the line defining its name."""
    def fix(m: re.Match) -> str:
        shown, name, target, _ = m.groups()
        line = definition_lines(ROOT / shown).get(name) if name and (ROOT / shown).exists() else None
        anchor = f"#L{line}" if line else ""
        return f"[`{shown}`" + (f" `{name}`" if name else "") + f"](../{target}{anchor})"
    return CODE_REF.sub(fix, text)


def checks(text: str) -> list[str]:
    return CHECK.findall(text)


def without_comments(code: str) -> str:
    return "\n".join(line.split("  #")[0].rstrip() for line in code.splitlines()
                     if line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_every_code_reference_names_a_file_and_a_name_that_exist(tour):
    text = tour.read_text(encoding="utf-8")
    refs = CODE_REF.findall(text)
    assert len(refs) >= 30, f"{tour.name}: only {len(refs)} code references"
    missing = []
    for shown, name, target, _ in refs:
        if shown != target:
            missing.append(f"[{shown}] links to {target}")
        elif not (ROOT / shown).exists():
            missing.append(f"{shown}: no such file")
        elif name and name not in definition_lines(ROOT / shown):
            missing.append(f"{shown} {name}: not defined there")
    for path in set(ANY_PY_PATH.findall(text)):  # a path mentioned in plain text or in a check
        if not (ROOT / path).exists():
            missing.append(f"{path}: no such file")
    assert not missing, f"{tour.name}: dangling code references: {missing}"


def test_the_chinese_checks_have_chinese_comments():
    english_word = re.compile(r"(?<![\w_])[a-z]{4,}(?![\w_])")  # not part of an identifier like d_model
    cjk = re.compile(r"[\u4e00-\u9fff]")
    english = []
    for code in checks(TOURS[1].read_text(encoding="utf-8")):
        for line in code.splitlines():
            comment = line.split("  #", 1)[1] if "  #" in line else ""
            if comment and not cjk.search(comment) and english_word.search(comment.replace("`", "")):
                english.append(line.strip())
    assert not english, f"English comments in the Chinese tour's checks: {english}"


# Claims the code contradicts, once in the tour; they must not come back.
WRONG = {"transformer.md": ["1,024\npositions", "1,024 positions", "no out-of-vocabulary word", "engineers",
                            "Residual connections are there to add the input back in"],
         "transformer.zh.md": ["1,024 个位置", "不存在未登录词", "投影的都是*下一层的输出*", "工程师",
                               "学习率计划", "残差连接是为了把输入加回去"]}


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_the_tour_makes_none_of_the_corrected_claims(tour):
    text = tour.read_text(encoding="utf-8")
    assert [claim for claim in WRONG[tour.name] if claim in text] == []


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_every_named_code_link_has_a_line_anchor_on_the_definition(tour):
    """A link opens the file at the name's ``def``/``class`` line; after the code moves,
    ``python tests/test_tour.py`` rewrites every anchor."""
    wrong = []
    for shown, name, _, anchor in CODE_REF.findall(tour.read_text(encoding="utf-8")):
        if not name:
            continue
        line = definition_lines(ROOT / shown).get(name)
        if line is None:
            continue  # reported by the test above
        if anchor != str(line):
            source = (ROOT / shown).read_text(encoding="utf-8").splitlines()[line - 1].strip()
            wrong.append(f"{shown} {name}: anchor {'#L' + anchor if anchor else 'missing'}, "
                         f"defined on line {line} ({source!r}): ../{shown}#L{line}")
    assert not wrong, (f"{tour.name}: {len(wrong)} line anchors to update (python tests/test_tour.py "
                       "rewrites them all):\n" + "\n".join(wrong))


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_every_figure_is_one_mt_figures_writes_and_is_committed(tour):
    shown = FIGURE_REF.findall(tour.read_text(encoding="utf-8"))
    assert sorted(set(shown)) == sorted(BY_NAME), f"{tour.name}: shows {sorted(set(shown))}"
    for name in shown:
        assert (ROOT / "docs" / "figures" / ("zh" if tour.name.endswith(".zh.md") else "") / name
                ).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_the_two_tours_agree_section_for_section():
    en, zh = (t.read_text(encoding="utf-8") for t in TOURS)
    heading = re.compile(r"^(#{2,3}) (\d*)", re.M)  # the level and the section number
    assert heading.findall(en) == heading.findall(zh)
    assert len(heading.findall(en)) >= 32
    assert FIGURE_REF.findall(en) == FIGURE_REF.findall(zh)
    assert [(f, n) for f, n, _, _ in CODE_REF.findall(en)] == [(f, n) for f, n, _, _ in CODE_REF.findall(zh)]
    assert [without_comments(c) for c in checks(en)] == [without_comments(c) for c in checks(zh)]
    for term in ["查询", "键", "值", "缩放点积注意力", "多头注意力", "位置编码", "残差连接", "层归一化", "掩码",
                 "交叉注意力", "标签平滑", "束搜索"]:
        assert term in zh, term


def run_checks(run_dir: Path, tour: Path = TOURS[0]) -> int:
    """Run every check of ``tour`` on ``run_dir``; the number of checks run."""
    found = checks(tour.read_text(encoding="utf-8"))
    for number, code in enumerate(found, 1):
        assert RUN_DIR_LINE.match(code), f"check {number} does not start with run_dir = \"...\""
        body = RUN_DIR_LINE.sub(f"run_dir = {str(run_dir)!r}\n", code)
        try:
            exec(compile(body, f"<{tour.name} check {number}>", "exec"), {"__name__": "__tour__"})
        except Exception as e:
            raise AssertionError(f"check {number} of docs/{tour.name} failed on {run_dir}: {e!r}\n{code}") from e
    return len(found)


@pytest.mark.slow
def test_the_runnable_checks_pass_on_a_tiny_trained_model(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a check that writes files writes them here
    assert run_checks(trained_run[0]) >= 25


def test_the_runnable_checks_hold_for_other_settings_too(tiny_config, tmp_path, monkeypatch):
    """Post-norm, learned positions, untied embeddings: 'the checks hold for any trained model'."""
    from mt.train import train

    config = tiny_config("model.norm=post", "model.positions=learned",
                         "model.tie_embeddings=none", "tokenizer.joint=false", "train.max_steps=20")
    train(config)
    monkeypatch.chdir(tmp_path)
    run_checks(Path(config.run_dir))


@pytest.mark.slow
def test_the_toy_trains_and_the_tour_holds_on_it(tmp_path, monkeypatch):
    """The tour's toy path, as "Before you start" gives it: write the corpus, train, run every check."""
    from mt.config import load_config
    from mt.toy import write_toy_data
    from mt.train import train
    from mt.translate import Translator

    run = tmp_path / "toy_reverse"  # the name the shipped figures were drawn with: their titles show it
    write_toy_data(tmp_path / "data")
    config = load_config(ROOT / "configs" / "toy_reverse.yaml",
                         [f"data.root={tmp_path / 'data'}", f"run_dir={run}"])
    train(config)
    translator = Translator.from_pretrained(run, device="cpu")
    assert translator.translate(["Ein Hund rennt über die Wiese."]) == ["Wiese. die über rennt Hund Ein"]
    monkeypatch.chdir(tmp_path)
    assert run_checks(run) >= 25
    pytest.importorskip("matplotlib")
    import matplotlib

    from mt.figures import MANIFEST, WEIGHTLESS, make_figures

    for lang, figures in [("en", ROOT / "docs" / "figures"), ("zh", ROOT / "docs" / "figures" / "zh")]:
        shipped = json.loads((figures / MANIFEST).read_text(encoding="utf-8"))
        make_figures(run, tmp_path / lang, shipped["inputs"]["sentence"], shipped["inputs"]["beam"], lang=lang)
        drawn = json.loads((tmp_path / lang / MANIFEST).read_text(encoding="utf-8"))
        if drawn["matplotlib"] != shipped["matplotlib"]:
            pytest.skip(f"matplotlib {matplotlib.__version__} draws other pixels than {shipped['matplotlib']}")
        # another CPU may train slightly different weights; then only the figures without them can match
        same_weights = drawn["inputs"]["valid_nll"] == shipped["inputs"]["valid_nll"]
        compared = list(drawn["figures"]) if same_weights else WEIGHTLESS
        differ = [name for name in compared if drawn["figures"][name] != shipped["figures"][name]]
        assert not differ, f"{figures}: {differ} differ from what scripts/tour_figures.sh draws now; run it"


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_the_tour_documents_each_figure_with_its_pixel_size(tour):
    text = tour.read_text(encoding="utf-8")
    for figure in FIGURES:
        w, h = figure.pixels
        assert f"`{figure.name}` | {w} x {h}" in text, figure.name


if __name__ == "__main__":  # python tests/test_tour.py: point every link's #L anchor at its definition
    for tour in TOURS:
        tour.write_text(anchored(tour.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"anchored {tour.relative_to(ROOT)}")
