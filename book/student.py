"""The workbook: student notebooks made from the book's chapters (`make workbook`).

    python book/student.py [--out _build/workbook] [chapters/05_layernorm.md ...]

One source, two outputs. A chapter's exercise cell holds a signature and docstring, then the reference body
between `### BEGIN SOLUTION` and `### END SOLUTION` marker lines (the nbgrader convention). The book shows the cell
with the body folded (book/workbook.py); this script writes the chapter as a notebook
`<out>/<chapter>.ipynb` in which every marked region (markers included) is replaced by one line,
`raise NotImplementedError("write this")`, at the marker's indentation, and every output is empty. The grader cell
that follows each exercise (`vitlib.grade.check(...)`, ending with `report`) then reports "not implemented yet"
until the reader writes the body. Only chapters with at least one exercise get a notebook; older notebooks in
<out> that no chapter produces any more are removed.
"""

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = 'raise NotImplementedError("write this")'


def student_source(source):
    """The cell source with each marked solution region replaced by the stub line (markers included).

    Returns (new_source, number_of_regions). A BEGIN without its END, or an END without a BEGIN, is a ValueError.
    """
    out, inside, regions = [], False, 0
    for number, line in enumerate(source.split("\n"), 1):
        mark = line.strip()
        if mark == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN!r} inside a solution (expected {END!r} first)")
            inside, regions = True, regions + 1
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif mark == END:
            if not inside:
                raise ValueError(f"line {number}: {END!r} without a {BEGIN!r} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without its {END!r}")
    return "\n".join(out), regions


def student_notebook(chapter):
    """The student notebook (an nbformat NotebookNode) of a MyST chapter, or None when it has no exercise."""
    chapter = Path(chapter)
    nb = jupytext.read(chapter)
    total = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            cell.source, regions = student_source(cell.source)
        except ValueError as exc:
            raise ValueError(f"{chapter}: code cell {index + 1}: {exc}") from None
        total += regions
        cell.outputs = []
        cell.execution_count = None
    if total == 0:
        return None
    try:
        shown = chapter.resolve().relative_to(ROOT)
    except ValueError:
        shown = chapter
    note = nbformat.v4.new_markdown_cell(
        f"*Workbook version of `{shown}`, written by `make workbook`: edit this copy, not the chapter.* "
        f"In each exercise cell the line `{STUB}` marks where your code goes: replace it, run the cell, then run "
        "the check cell after it, which tells you whether your function passed and, if not, what is wrong."
    )
    nb.cells.insert(0, note)
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def build(chapters, out):
    """Write one student notebook per chapter with exercises into `out`; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chapter in chapters:
        nb = student_notebook(chapter)
        if nb is None:
            continue
        path = out / (Path(chapter).stem + ".ipynb")
        nbformat.write(nb, path)
        written.append(path)
    for stale in set(out.glob("*.ipynb")) - set(written):
        stale.unlink()
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="MyST chapters (default: chapters/*.md)")
    parser.add_argument("--out", default=str(ROOT / "_build" / "workbook"), help="output folder")
    args = parser.parse_args(argv)
    chapters = args.chapters or sorted((ROOT / "chapters").glob("*.md"))
    try:
        written = build(chapters, args.out)
    except ValueError as exc:
        print(f"make workbook: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} student notebooks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
