"""The workbook: student notebooks made from the book's chapters (`make workbook`).

    python book/student.py [--out _build/workbook] [chapters/05_layernorm.md ...]

One source, two outputs. A chapter's exercise cell holds a signature and docstring, then the reference body
between `### BEGIN SOLUTION` and `### END SOLUTION` marker lines (the nbgrader convention). The book shows the cell
with the body folded (book/workbook.py); this script writes the chapter as a notebook `<out>/<chapter>.ipynb` in
which every marked region (markers included) is replaced by one line, `raise NotImplementedError("write this")`,
at the marker's indentation, and every output is empty. The grader cell that follows each exercise
(`vitlib.grade.check(...)`, ending with `report`) then reports "not implemented yet" until the reader writes the
body. The markdown is made readable in plain JupyterLab (`student_markdown`: roles become text, dropdown solutions
become closed <details> elements). Only chapters with at least one exercise get a notebook; older notebooks in
<out> that no chapter produces any more are removed. A notebook you have edited (your answers) is never
overwritten or removed, so `make lab` can rebuild the workbook every time: delete it, or pass --force, to get a
fresh copy.
"""

import argparse
import hashlib
import json
import re
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


ROLE = re.compile(r"\{(?P<name>[\w:-]+)\}`(?P<body>[^`]*)`")
ADMONITION = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|:{3,})\{admonition\}\s*(?P<title>.*?)\s*$")


def _role(match):
    name, body = match["name"], match["body"]
    explicit = re.fullmatch(r"(?s)(.*?)\s*<([^<>]+)>", body)
    if name == "typed":
        return body
    if name.startswith("glue"):
        return f"`{body.split(':')[0]}`"  # the value is computed by a code cell of this notebook
    if name == "eq":
        return f"({body})"
    if name in ("doc", "ref", "numref", "term"):
        return explicit[1] if explicit else body
    return match[0]


def student_markdown(text):
    """MyST markdown -> markdown that JupyterLab renders: roles become plain text (a glued value becomes its key,
    in code font), labels and equation labels go, and an admonition becomes a bold title, or a closed <details>
    element when it is a dropdown (so the solutions stay folded in the workbook too)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        opening = ADMONITION.match(line)
        if opening:
            fence, indent = opening["fence"], opening["indent"]
            j = i + 1
            options = {}
            while j < len(lines) and re.match(r"^\s*:[\w-]+:", lines[j]):
                key, value = re.match(r"^\s*:([\w-]+):\s*(.*)$", lines[j]).groups()
                options[key] = value
                j += 1
            body, depth = [], 0
            while j < len(lines):
                stripped = lines[j].strip()
                if re.fullmatch(rf"{re.escape(fence[0])}{{{len(fence)},}}", stripped) and depth == 0:
                    break
                inner = re.match(r"^\s*(`{3,}|:{3,})\S*", lines[j])
                if inner and len(inner[1]) < len(fence) and inner[1][0] == fence[0]:
                    depth = 0 if stripped == inner[1] and depth else 1  # a nested fence opens or closes
                body.append(lines[j])
                j += 1
            title = opening["title"] or "Note"
            inner_md = student_markdown("\n".join(body)).strip("\n")
            if "dropdown" in options.get("class", ""):
                out += [f"{indent}<details><summary>{title}</summary>", "", inner_md, "", f"{indent}</details>"]
            else:
                out += [f"{indent}**{title}.**", "", inner_md]
            i = j + 1
            continue
        if re.fullmatch(r"\s*\([\w:-]+\)=\s*", line):
            i += 1
            continue
        line = re.sub(r"^(\s*\$\$)\s*\([\w:-]+\)\s*$", r"\1", line)  # $$ (label) -> $$
        out.append(ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


def student_notebook(chapter):
    """The student notebook (an nbformat NotebookNode) of a MyST chapter, or None when it has no exercise."""
    chapter = Path(chapter)
    nb = jupytext.read(chapter)
    total = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = student_markdown(cell.source)
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
        "the check cell after it, which tells you whether your function passed and, if not, what is wrong. "
        "A number the book prints inside its prose appears here as the name of the value (`like_this`): the code "
        "cells compute it, print it to see it."
    )
    nb.cells.insert(0, note)
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def _digest(nb):
    """A hash of the cells' types and sources (not outputs, not metadata): has the reader edited the notebook?"""
    cells = [(c.cell_type, c.source) for c in nb.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def edited(path):
    """True when the notebook at `path` was changed after `make workbook` wrote it (running cells is no change)."""
    nb = nbformat.read(path, as_version=4)
    return nb.metadata.get("workbook", {}).get("digest") != _digest(nb)


def build(chapters, out, force=False, kept=None):
    """Write one student notebook per chapter with exercises into `out`; return the paths written.

    A notebook the reader has edited is never overwritten or removed (unless `force`): its path goes to `kept`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept = [] if kept is None else kept
    written, produced = [], set()
    for chapter in chapters:
        nb = student_notebook(chapter)
        if nb is None:
            continue
        path = out / (Path(chapter).stem + ".ipynb")
        produced.add(path)
        if path.exists() and not force and edited(path):
            kept.append(path)
            continue
        nb.metadata["workbook"] = {"chapter": Path(chapter).name, "digest": _digest(nb)}
        nbformat.write(nb, path)
        written.append(path)
    for stale in sorted(set(out.glob("*.ipynb")) - produced):
        if force or not edited(stale):
            stale.unlink()
        else:
            kept.append(stale)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="MyST chapters (default: chapters/*.md)")
    parser.add_argument("--out", default=str(ROOT / "_build" / "workbook"), help="output folder")
    parser.add_argument("--force", action="store_true", help="overwrite notebooks you have edited, too")
    args = parser.parse_args(argv)
    chapters = args.chapters or sorted((ROOT / "chapters").glob("*.md"))
    kept = []
    try:
        written = build(chapters, args.out, force=args.force, kept=kept)
    except ValueError as exc:
        print(f"make workbook: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept  {path}: you have edited it (delete it, or run with --force, for a fresh copy)")
    print(f"{len(written)} student notebooks written, {len(kept)} kept, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
