"""The guided tour (docs/transformer.md, docs/transformer.zh.md) stays true to the code.

Every code reference (file and name) must exist, every figure must be one ``mt figures``
writes (and be committed), the two languages must agree section for section, and every
runnable check must pass on a tiny trained model.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mt.figures import BY_NAME, FIGURES

ROOT = Path(__file__).resolve().parent.parent
TOURS = [ROOT / "docs" / "transformer.md", ROOT / "docs" / "transformer.zh.md"]
# [`mt/model.py` `attention_weights`](../mt/model.py): a file and a (dotted) name in it
CODE_REF = re.compile(r"\[`(mt/[\w/]+\.py)`(?: `([\w.]+)`)?\]\(\.\./(mt/[\w/]+\.py)\)")
ANY_PY_PATH = re.compile(r"\bmt/[\w/]+\.py\b")
FIGURE_REF = re.compile(r"!\[[^\]]*\]\(figures/([\w.-]+)\)")
CHECK = re.compile(r"```python\n(run_dir = .*?)```", re.S)
RUN_DIR_LINE = re.compile(r'\Arun_dir = "[^"]*"[^\n]*\n')


def names_defined(path: Path) -> set[str]:
    """Top-level functions, classes and assignments, and ``Class.member`` for class bodies."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(f"{node.name}.{member.name}")
                    elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                        names.add(f"{node.name}.{member.target.id}")
        elif isinstance(node, ast.Assign):
            for target in node.targets:  # NAME = ... and A, B = ...
                names.update(t.id for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


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
    for shown, name, target in refs:
        if shown != target:
            missing.append(f"[{shown}] links to {target}")
        elif not (ROOT / shown).exists():
            missing.append(f"{shown}: no such file")
        elif name and name not in names_defined(ROOT / shown):
            missing.append(f"{shown} {name}: not defined there")
    for path in set(ANY_PY_PATH.findall(text)):  # a path mentioned in plain text or in a check
        if not (ROOT / path).exists():
            missing.append(f"{path}: no such file")
    assert not missing, f"{tour.name}: dangling code references: {missing}"


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_every_figure_is_one_mt_figures_writes_and_is_committed(tour):
    shown = FIGURE_REF.findall(tour.read_text(encoding="utf-8"))
    assert sorted(set(shown)) == sorted(BY_NAME), f"{tour.name}: shows {sorted(set(shown))}"
    for name in shown:
        assert (ROOT / "docs" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_the_two_tours_agree_section_for_section():
    en, zh = (t.read_text(encoding="utf-8") for t in TOURS)
    heading = re.compile(r"^(#{2,3}) ", re.M)
    assert [h for h in heading.findall(en)] == [h for h in heading.findall(zh)]
    assert FIGURE_REF.findall(en) == FIGURE_REF.findall(zh)
    assert [(f, n) for f, n, _ in CODE_REF.findall(en)] == [(f, n) for f, n, _ in CODE_REF.findall(zh)]
    assert [without_comments(c) for c in checks(en)] == [without_comments(c) for c in checks(zh)]
    for term in ["查询", "键", "值", "缩放点积注意力", "多头注意力", "位置编码", "残差连接", "层归一化", "掩码",
                 "交叉注意力", "标签平滑", "束搜索"]:
        assert term in zh, term


@pytest.mark.slow
def test_the_runnable_checks_pass_on_a_tiny_trained_model(trained_run, tmp_path, monkeypatch):
    run_dir = trained_run[0]
    monkeypatch.chdir(tmp_path)  # a check that writes files writes them here
    en = checks(TOURS[0].read_text(encoding="utf-8"))
    assert len(en) >= 15, f"only {len(en)} runnable checks"
    for number, code in enumerate(en, 1):
        assert RUN_DIR_LINE.match(code), f"check {number} does not start with run_dir = \"...\""
        body = RUN_DIR_LINE.sub(f"run_dir = {str(run_dir)!r}\n", code)
        try:
            exec(compile(body, f"<transformer.md check {number}>", "exec"), {"__name__": "__tour__"})
        except Exception as e:
            raise AssertionError(f"check {number} of docs/transformer.md failed: {e!r}\n{code}") from e


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_the_tour_documents_each_figure_with_its_pixel_size(tour):
    text = tour.read_text(encoding="utf-8")
    for figure in FIGURES:
        w, h = figure.pixels
        assert f"`{figure.name}` | {w} x {h}" in text, figure.name
