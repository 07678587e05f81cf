"""python -m vitlib grade FILE.py [--exercise NAME] [--seed S] [--backend numpy|torch]
python -m vitlib grade --list

Imports FILE.py, finds the functions named like exercises (or the one --exercise names), prints
each report. Exit status: 0 every exercise passed, 1 some did not (or are not implemented yet),
2 the file does not import, defines no exercise, or the flags are wrong (one `error:` line).
"""

import argparse
import importlib.util
import os
import sys
import traceback


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _list():
    from .exercises import EXERCISES

    for ex in sorted(EXERCISES.values(), key=lambda e: (e.chapter, e.name)):
        print(f"ch{ex.chapter:<3} {ex.signature}")
        print(f"      {ex.statement}")


def _load(path):
    if not os.path.isfile(path):
        raise SystemExit(_error(f"{path}: no such file"))
    name = "_vitlib_grade_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(_error(f"{path}: not a Python file"))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # its own imports of sibling files
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SyntaxError, ImportError, anything raised at import time
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            exc = RuntimeError("the file called sys.exit() while being imported")
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)
        ]
        where = f" (line {frames[-1].lineno})" if frames else ""
        if isinstance(exc, SyntaxError) and exc.lineno:
            where = f" (line {exc.lineno})"
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise SystemExit(_error(f"{path} does not import{where}: {type(exc).__name__}: {detail}")) from None
    finally:
        sys.path.pop(0)
    return module


def _error(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    p = _Parser(prog="python -m vitlib grade", description="Grade your own backward functions with vitlib.grade.")
    p.add_argument("file", nargs="?", help="a Python file defining functions named like the exercises")
    p.add_argument("--exercise", help="grade only this exercise (default: every exercise the file defines)")
    p.add_argument("--list", action="store_true", help="list the exercises and exit")
    p.add_argument("--seed", type=int, default=0, help="seed of the hidden cases (default 0)")
    p.add_argument("--backend", choices=["numpy", "torch"], default="numpy", help="array type passed in")
    args = p.parse_args(argv)
    if args.list:
        _list()
        return 0
    if args.file is None:
        return _error("give a FILE.py to grade, or --list")
    from . import check
    from .exercises import EXERCISES

    if args.exercise is not None and args.exercise not in EXERCISES:
        return _error(f"unknown exercise {args.exercise!r}; `python -m vitlib grade --list` lists them")
    module = _load(args.file)
    names = [args.exercise] if args.exercise else [n for n in EXERCISES if callable(getattr(module, n, None))]
    if args.exercise and not callable(getattr(module, args.exercise, None)):
        return _error(f"{args.file} defines no function {args.exercise}")
    if not names:
        return _error(f"{args.file} defines no exercise function; `python -m vitlib grade --list` lists the names")
    passed = 0
    for i, n in enumerate(names):
        report = check(n, getattr(module, n), seed=args.seed, backend=args.backend)
        if i:
            print()
        print(report)
        passed += report.passed
    if len(names) > 1:
        print(f"\n{passed} of {len(names)} exercises passed")
    return 0 if passed == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
