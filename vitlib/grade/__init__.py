"""vitlib.grade: check the reader's own backward, and say what is wrong with it.

    import vitlib.grade
    report = vitlib.grade.check("layernorm_backward", layernorm_backward)
    report.passed        # True or False
    report               # in a notebook: a short table and one paragraph of diagnosis

The reader's function takes the FORWARD inputs (never vitlib's caches) and returns the
gradients; `EXERCISES` lists every exercise with its signature, statement and chapter.
A function that still raises NotImplementedError gets a "not implemented yet" report.
`python -m vitlib grade FILE.py` does the same from the command line.

Not imported by `import vitlib`; torch (the oracle) is imported on the first check.
"""

from .engine import Report, Row, check
from .exercises import EXERCISES, Exercise

__all__ = ["check", "Report", "Row", "EXERCISES", "Exercise"]
