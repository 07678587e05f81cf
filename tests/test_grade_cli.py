"""python -m vitlib grade: exit 0 when every exercise passes, 1 when one does not, 2 for a file
that does not import, defines no exercise, or bad flags (one `error:` line, no traceback)."""

import subprocess
import sys
import textwrap

import pytest

from vitlib.grade.cli import main

GOOD = """
import numpy as np

def sgd_step(w, g, lr):
    return w - lr * g

def softmax_ce_backward(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y)
"""

BAD = """
import numpy as np

def sgd_step(w, g, lr):
    return w - lr * g

def softmax_ce_backward(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p  # the 1/N is missing
"""

TODO = """
def layernorm_backward(dY, X, gamma, beta, eps):
    raise NotImplementedError("write this")
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_all_pass_exit_0(tmp_path, capsys):
    code, out, err = _run([_write(tmp_path, "good.py", GOOD)], capsys)
    assert code == 0, out + err
    assert "sgd_step: passed" in out and "softmax_ce_backward: passed" in out
    assert "2 of 2 exercises passed" in out


def test_one_fails_exit_1(tmp_path, capsys):
    code, out, _ = _run([_write(tmp_path, "bad.py", BAD)], capsys)
    assert code == 1
    assert "softmax_ce_backward: FAILED" in out and "without the 1/N" in out
    assert "1 of 2 exercises passed" in out


def test_exercise_flag_selects_one(tmp_path, capsys):
    code, out, _ = _run([_write(tmp_path, "bad.py", BAD), "--exercise", "sgd_step"], capsys)
    assert code == 0 and "softmax_ce_backward" not in out


def test_not_implemented_exit_1(tmp_path, capsys):
    code, out, _ = _run([_write(tmp_path, "todo.py", TODO)], capsys)
    assert code == 1 and "not implemented yet" in out


@pytest.mark.parametrize(
    "text,argv_extra,expected",
    [
        ("def f(:\n", [], "does not import (line 1): SyntaxError"),
        ("import no_such_module_anywhere\n", [], "does not import (line 1): ModuleNotFoundError"),
        ("x = 1\n", [], "defines no exercise function"),
        (GOOD, ["--exercise", "nope"], "unknown exercise 'nope'"),
        (GOOD, ["--exercise", "adamw_step"], "defines no function adamw_step"),
        (GOOD, ["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_file_or_flags_exit_2(tmp_path, capsys, text, argv_extra, expected):
    code, out, err = _run([_write(tmp_path, "sol.py", text), *argv_extra], capsys)
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err + out and len(err.strip().splitlines()) == 1


def test_missing_file_exit_2(tmp_path, capsys):
    code, _, err = _run([str(tmp_path / "nope.py")], capsys)
    assert code == 2 and "no such file" in err


def test_list(capsys):
    code, out, _ = _run(["--list"], capsys)
    assert code == 0
    for name in ("layernorm_backward(dY, X, gamma, beta, eps)", "attention_backward(dY, X, W_q", "vit_train_step(x"):
        assert name in out


def test_python_m_vitlib_grade(tmp_path):
    """The real command line, through vitlib/__main__.py."""
    bad = _write(tmp_path, "none.py", "x = 1\n")
    r = subprocess.run([sys.executable, "-m", "vitlib", "grade", bad], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "vitlib", "grade", "--list"], capture_output=True, text=True)
    assert r.returncode == 0 and "softmax_ce_backward" in r.stdout
