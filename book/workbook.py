"""Sphinx extension (loaded from _config.yml, `sphinx: local_extensions`): the book's two chapter conventions.

1. The `{typed}` role: {typed}`89.7%` renders its content as plain text. It marks a number typed in the prose
   that is cited or chosen by definition (a benchmark's accuracy, a default of 1e-5), not measured by the chapter;
   tests/test_prose.py flags measured-looking numbers in the prose everywhere except inside this role, glue roles
   and maths (STYLE.md, "Numbers in the prose").
2. The workbook fold: inside a code cell, the lines between `### BEGIN SOLUTION` and `### END SOLUTION` are the
   reference solution of an exercise. On the built page the cell's code block is split in three: the lines above
   the first marker (signature and docstring, visible), the solution body in a `<details>` element (folded, one
   click on "Solution" opens it; sphinx-togglebutton's `toggle-details` classes, so it looks like the book's other
   toggles, and it needs no script), and the lines below the last marker. The marker lines themselves are not shown.
   `make workbook` (book/student.py) writes the same chapters as student notebooks, with each solution body
   replaced by `raise NotImplementedError("write this")`.
"""

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"

# sphinx-togglebutton's chevron (its togglebutton.js builds the same markup for `.toggle` elements)
CHEVRON = (
    '<svg xmlns="http://www.w3.org/2000/svg" class="tb-icon toggle-chevron-right" width="44" height="44" '
    'viewBox="0 0 24 24" stroke-width="1.5" stroke="#000000" fill="none" stroke-linecap="round" '
    'stroke-linejoin="round"><path stroke="none" d="M0 0h24v24H0z" fill="none"/><polyline points="9 6 15 12 9 18" />'
    "</svg>"
)
SUMMARY = "Solution (click to show)"


def typed_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """{typed}`1e-5`: the content, as plain text (no markup, no maths)."""
    return [nodes.inline(rawtext, text, classes=["typed-number"])], []


class solution_fold(nodes.General, nodes.Element):
    """The folded solution body of a workbook exercise cell (HTML: a closed <details>)."""


def visit_solution_fold_html(self, node):
    self.body.append(
        '<details class="toggle-details workbook-solution">\n<summary class="toggle-details__summary">'
        f'{CHEVRON}<span class="toggle-details__summary-text">{SUMMARY}</span></summary>\n'
    )


def depart_solution_fold_html(self, node):
    self.body.append("</details>\n")


def visit_solution_fold_other(self, node):
    pass


def depart_solution_fold_other(self, node):
    pass


def split_solution(text):
    """Split a cell's source at the solution markers: [("shown", lines), ("solution", lines), ...].

    Marker lines are dropped; empty pieces are left out. A BEGIN without its END is a ValueError.
    """
    pieces, current, kind = [], [], "shown"
    for line in text.split("\n"):
        mark = line.strip()
        if mark == BEGIN:
            if kind == "solution":
                raise ValueError(f"{BEGIN!r} inside a solution (expected {END!r} first)")
            pieces.append((kind, current))
            current, kind = [], "solution"
        elif mark == END:
            if kind != "solution":
                raise ValueError(f"{END!r} without a {BEGIN!r} before it")
            pieces.append((kind, current))
            current, kind = [], "shown"
        else:
            current.append(line)
    if kind == "solution":
        raise ValueError(f"{BEGIN!r} without its {END!r}")
    pieces.append((kind, current))
    return [(k, lines) for k, lines in pieces if any(s.strip() for s in lines)]


def _code_block_like(node, text):
    new = nodes.literal_block(text, text)
    for key, value in node.attributes.items():
        if key not in ("ids", "names", "dupnames", "backrefs"):
            new[key] = value
    new.source, new.line = node.source, node.line
    return new


class FoldSolutions(SphinxPostTransform):
    """Fold the solution body of every code cell that has `### BEGIN SOLUTION` / `### END SOLUTION` markers."""

    default_priority = 198  # before myst-nb's HideInputCells (199), which may wrap the whole input
    formats = ("html",)

    def run(self, **kwargs):
        for source in list(self.document.findall(nodes.container)):
            if source.get("nb_element") != "cell_code_source":
                continue
            for block in list(source.findall(nodes.literal_block)):
                text = block.astext()
                if BEGIN not in text:
                    continue
                try:
                    pieces = split_solution(text)
                except ValueError as exc:
                    logger.warning("workbook cell: %s", exc, location=block)
                    continue
                replacement = []
                for kind, lines in pieces:
                    code = _code_block_like(block, "\n".join(lines).strip("\n"))
                    if kind == "solution":
                        fold = solution_fold()
                        fold += code
                        replacement.append(fold)
                    else:
                        replacement.append(code)
                block.replace_self(replacement)


def setup(app):
    app.add_role("typed", typed_role)
    app.add_node(
        solution_fold,
        html=(visit_solution_fold_html, depart_solution_fold_html),
        latex=(visit_solution_fold_other, depart_solution_fold_other),
        text=(visit_solution_fold_other, depart_solution_fold_other),
    )
    app.add_post_transform(FoldSolutions)
    return {"version": "0.2", "parallel_read_safe": True, "parallel_write_safe": True}
