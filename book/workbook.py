"""Sphinx extension (loaded from _config.yml, `sphinx: local_extensions`): the book's two chapter conventions.

1. The `{typed}` role: {typed}`89.7%` renders its content as plain text. It marks a number typed in the prose
   that is cited or chosen by definition (a benchmark's accuracy, a default of 1e-5), not measured by the chapter;
   tests/test_prose.py flags measured-looking numbers in the prose everywhere except inside this role, glue roles
   and maths (STYLE.md, "Numbers in the prose").
2. The workbook fold: inside a code cell, the lines between `### BEGIN SOLUTION` and `### END SOLUTION` are the
   reference solution of an exercise. The built page shows the signature and docstring, and the solution body
   folded (one click on the toggle button shows it). `make workbook` (book/student.py) writes the same chapters as
   student notebooks, with each solution body replaced by `raise NotImplementedError("write this")`.
"""

from docutils import nodes


def typed_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """{typed}`1e-5`: the content, as plain text (no markup, no maths)."""
    return [nodes.inline(rawtext, text, classes=["typed-number"])], []


def setup(app):
    app.add_role("typed", typed_role)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
