"""The workbook: one source (the MyST chapters), two outputs.

- book/student.py (`make workbook`) writes a student notebook per chapter with exercises, every solution body
  replaced by `raise NotImplementedError("write this")`, outputs empty. Each student notebook executes top to
  bottom without an error, and every grader cell in it reports "not implemented" (unit stage; one test per
  notebook, so `pytest -n 2` runs two at a time).
- book/workbook.py folds each solution body in the built HTML; `test_built_book_folds_solutions` (marked `book`,
  it needs `make book`'s _build/html) checks that every exercise of every chapter is shown with its signature
  visible, its body inside the fold, and its grader report "passed".
"""

import html
import importlib.util
import os
import re
from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))
HTML = ROOT / "_build" / "html"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("write this")'
GRADER_CALL = re.compile(r"vitlib\.grade\.check\(|\bgrade\.check\(|\bcheck\(\s*[\"']")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"book_{name}", ROOT / "book" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


student = _load("student")
workbook = _load("workbook")


MYST_HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def exercise_chapters():
    return [p for p in CHAPTERS if BEGIN in p.read_text(encoding="utf-8")]


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


# ---- the source transformation, on small snippets ----------------------------------------------------------------

SNIPPET = '''def f(x, y):
    """Docstring stays."""
    ### BEGIN SOLUTION
    z = x + y
    return z
    ### END SOLUTION


def g(x):
    if x:
        ### BEGIN SOLUTION
        return 1
        ### END SOLUTION
    return 0
'''


def test_student_source_replaces_each_region_by_the_stub_at_its_indentation():
    out, regions = student.student_source(SNIPPET)
    assert regions == 2
    assert BEGIN not in out and END not in out
    assert "z = x + y" not in out and "return 1" not in out
    lines = out.split("\n")
    assert lines[:3] == ["def f(x, y):", '    """Docstring stays."""', "    " + STUB]
    assert "        " + STUB in lines  # the nested region keeps its deeper indentation
    assert "    return 0" in lines  # code after a region stays
    compile(out, "<student>", "exec")  # still valid Python
    assert student.student_source("x = 1\n") == ("x = 1\n", 0)


@pytest.mark.parametrize(
    "bad",
    [f"    {BEGIN}\n    x = 1\n", f"    x = 1\n    {END}\n", f"    {BEGIN}\n    {BEGIN}\n    {END}\n"],
    ids=["begin-without-end", "end-without-begin", "nested-begin"],
)
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(ValueError, match="SOLUTION"):
        student.student_source(bad)
    with pytest.raises(ValueError, match="SOLUTION"):
        workbook.split_solution(bad)


def test_book_split_shows_head_and_tail_and_folds_only_the_body():
    pieces = workbook.split_solution(SNIPPET)
    assert [kind for kind, _ in pieces] == ["shown", "solution", "shown", "solution", "shown"]
    shown = "\n".join("\n".join(lines) for kind, lines in pieces if kind == "shown")
    folded = "\n".join("\n".join(lines) for kind, lines in pieces if kind == "solution")
    assert '"""Docstring stays."""' in shown and "def g(x):" in shown and "return 0" in shown
    assert "z = x + y" in folded and "return 1" in folded
    assert "z = x + y" not in shown and BEGIN not in shown + folded and END not in shown + folded


def test_student_notebook_of_a_chapter_without_exercises_is_none(tmp_path):
    chapter = tmp_path / "99_plain.md"
    header = MYST_HEADER
    chapter.write_text(header + "# Plain\n\n```{code-cell} ipython3\nx = 1\n```\n")
    assert [c.cell_type for c in jupytext.read(chapter).cells] == ["markdown", "code"]  # read as MyST
    assert student.student_notebook(chapter) is None
    assert student.build([chapter], tmp_path / "out") == []


MYST = """(sec-x)=
The error is {glue:text}`err:.1e`, cited {typed}`89.7%`, see {eq}`ce-dlogits`, {doc}`the LN chapter <05_layernorm>`.

$$
a = b
$$ (eq-a)

````{admonition} Solution
:class: dropdown
Text with $x$.
```python
print(1)
```
More.
````

```{admonition} Why
Plain note.
```
"""


def test_student_markdown_renders_in_plain_jupyterlab():
    out = student.student_markdown(MYST)
    assert "(sec-x)=" not in out and "$$ (eq-a)" not in out and "$$\na = b\n$$" in out
    assert "`err`" in out and "89.7%" in out and "(ce-dlogits)" in out and "the LN chapter" in out
    assert "{" not in out.replace("{x}", "")  # no role, no directive left
    assert "<details><summary>Solution</summary>" in out and "</details>" in out
    inner = out[out.index("<details>") : out.index("</details>")]
    assert "```python\nprint(1)\n```" in inner and "More." in inner  # the nested fence stays inside the fold
    assert "**Why.**" in out and "Plain note." in out and "Plain note." not in inner


def test_rebuilding_keeps_a_notebook_the_reader_edited(tmp_path):
    chapter = tmp_path / "99_ex.md"
    header = MYST_HEADER
    cell = f"```{{code-cell}} ipython3\ndef f(x):\n    {BEGIN}\n    return x\n    {END}\n```\n"
    chapter.write_text(header + "# Ex\n\n" + cell)
    out = tmp_path / "out"
    (path,) = student.build([chapter], out)
    assert not student.edited(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="ran")]  # running a cell is no edit
    nbformat.write(nb, path)
    assert not student.edited(path) and student.build([chapter], out) == [path]
    nb = nbformat.read(path, as_version=4)
    nb.cells[-1].source = nb.cells[-1].source.replace(STUB, "return 2 * x")  # the reader's answer
    nbformat.write(nb, path)
    kept = []
    assert student.edited(path) and student.build([chapter], out, kept=kept) == [] and kept == [path]
    assert "return 2 * x" in path.read_text()
    chapter.unlink()  # the chapter is gone: an edited notebook still stays
    assert student.build([], out, kept=kept) == [] and path.exists()
    assert student.build([], out, force=True) == [] and not path.exists()


# ---- the real chapters -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("workbook")
    paths = student.build(CHAPTERS, out)
    return {p.stem: p for p in paths}


def test_one_student_notebook_per_chapter_with_exercises(built):
    assert sorted(built) == sorted(p.stem for p in exercise_chapters())


def test_student_notebooks_have_no_solution_and_no_output(built):
    for stem, path in built.items():
        source = (ROOT / "chapters" / f"{stem}.md").read_text(encoding="utf-8")
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        cells = _code_cells(nb)
        text = "\n".join(c.source for c in cells)
        assert BEGIN not in text and END not in text, stem
        assert text.count(STUB) == source.count(BEGIN), stem
        assert all(c.outputs == [] and c.execution_count is None for c in cells), stem
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "{admonition}" not in markdown and not re.search(r"\{(glue|typed|eq|doc|ref|numref)[:\w]*\}`", markdown)
        assert markdown.count("<details>") == len(re.findall(r":class: dropdown", source)), stem
        # the chapter's own code cells, in the same order (only the solution bodies differ)
        chapter_cells = _code_cells(jupytext.read(ROOT / "chapters" / f"{stem}.md"))
        assert [student.student_source(c.source)[0] for c in chapter_cells] == [c.source for c in cells], stem
        # every exercise is followed by a grader cell that ends with the bare report
        for i, cell in enumerate(cells):
            if STUB in cell.source:
                graders = [c for c in cells[i + 1 :] if GRADER_CALL.search(c.source)]
                assert graders, f"{stem}: exercise cell {i + 1} has no grader cell after it"


def _outputs_text(cell):
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in out.get("data", {}):
                    parts.append(str(out["data"][mime]))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}")
    return "\n".join(parts)


@pytest.mark.parametrize("chapter", [p.stem for p in exercise_chapters()])
def test_student_notebook_runs_top_to_bottom_and_reports_not_implemented(chapter, tmp_path):
    path = student.build([ROOT / "chapters" / f"{chapter}.md"], tmp_path)[0]
    nb = nbformat.read(path, as_version=4)
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "chapters")}}
        )
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as exc:
            errors = [c for c in _code_cells(nb) if any(o.get("output_type") == "error" for o in c.outputs)]
            failing = errors[0] if errors else None
            where = "\n".join(failing.source.split("\n")[:6]) if failing is not None else "?"
            pytest.fail(
                f"student notebook {chapter} does not run top to bottom: {exc.ename}: {exc.evalue}\n"
                f"in the cell (a later cell calling the reader's unsolved function?):\n{where}",
                pytrace=False,
            )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    graders = [c for c in _code_cells(nb) if GRADER_CALL.search(c.source)]
    assert graders, chapter
    for cell in graders:
        shown = _outputs_text(cell)
        assert re.search(r"not implemented", shown, re.IGNORECASE), (
            f"{chapter}: grader cell does not report 'not implemented':\n{cell.source}\n--- output:\n{shown}"
        )


# ---- the built book (after `make book`) --------------------------------------------------------------------------


def _text(node):
    return html.unescape(node.get_text())


@pytest.mark.book
@pytest.mark.parametrize("chapter", [p.stem for p in exercise_chapters()])
def test_built_book_folds_solutions_and_reports_passed(chapter):
    bs4 = pytest.importorskip("bs4")
    page = HTML / "chapters" / f"{chapter}.html"
    if not page.exists():
        if os.environ.get("BOOK_TESTS") == "1":
            pytest.fail(f"{page} is missing: run `make book` first", pytrace=False)
        pytest.skip(f"{page} is missing (run `make book`)")
    soup = bs4.BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    cells = soup.select("div.cell")
    exercises = [c for c in _code_cells(jupytext.read(ROOT / "chapters" / f"{chapter}.md")) if BEGIN in c.source]
    folds = soup.select("details.workbook-solution")
    assert len(folds) == sum(c.source.count(BEGIN) for c in exercises), chapter
    assert BEGIN not in soup.get_text() and END not in soup.get_text(), chapter
    for fold in folds:
        assert not fold.has_attr("open"), f"{chapter}: a solution is open by default"
    for exercise in exercises:
        pieces = workbook.split_solution(exercise.source)
        head = next(lines for kind, lines in pieces if kind == "shown")
        signature = next(line for line in head if line.strip()).strip()
        cell = next(
            (c for c in cells if c.select_one("div.cell_input") and signature in _text(c.select_one("div.cell_input"))),
            None,
        )
        assert cell is not None, f"{chapter}: no cell shows {signature!r}"
        cell_input = cell.select_one("div.cell_input")
        visible = "".join(
            _text(block)
            for block in cell_input.select("div.highlight")
            if not block.find_parent("details", class_="workbook-solution")
        )
        hidden = "".join(_text(d) for d in cell_input.select("details.workbook-solution"))
        for kind, lines in pieces:
            for line in (s.strip() for s in lines):
                if line:
                    assert line in (hidden if kind == "solution" else visible), f"{chapter}: {line!r} ({kind})"
        # the grader cell after the exercise: its executed report says "passed"
        later = cells[cells.index(cell) + 1 :]
        grader = next(c for c in later if GRADER_CALL.search(_text(c.select_one("div.cell_input") or c)))
        output = grader.select_one("div.cell_output")
        assert output is not None, f"{chapter}: the grader cell after {signature!r} has no output"
        report = _text(output)
        assert re.search(r"\bpassed\b", report, re.IGNORECASE), f"{chapter}: {signature!r}: {report[:300]}"
        assert not re.search(r"not implemented|\bfailed\b|not passed", report, re.IGNORECASE), report[:300]
