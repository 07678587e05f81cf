"""check(name, fn): run the reader's function on hidden cases and say what, if anything, is wrong.

For every case, in this order, stopping at the first failure:
  1. call fn (autograd switched off: calling it fails the check); an exception is reported at
     the line of the reader's own code that raised it;
  2. the outputs' count, types and shapes;
  3. the values, against vitlib's reference and torch autograd (relative error per output;
     the tolerance follows the dtype the reader returned);
  4. that every input is bit-for-bit what it was before the call.
A wrong value is matched against the catalogue of known mistakes run on the same case; for a
compound exercise the first wrong intermediate the reader returned is named.
"""

import copy
import html
import os
import re
import sys
import traceback
from dataclasses import dataclass, field

import numpy as np

from vit_oracles.trap import HandWrittenOnly, hand_written_only

from . import mistakes as _mistakes
from . import reference as _reference
from .cases import make_cases
from .exercises import EXERCISES, flat_segments, seed_intermediates

STATUS_PASSED, STATUS_FAILED, STATUS_TODO = "passed", "failed", "not implemented yet"
_GRADE_DIR = os.path.dirname(os.path.abspath(__file__))
_VITLIB_DIR = os.path.dirname(_GRADE_DIR)


# ------------------------------------------------------------------ the report


@dataclass
class Row:
    name: str
    expected_shape: tuple | None
    got_shape: tuple | None
    rel_error: float | None  # the larger of the errors against vitlib and against torch
    tolerance: float | None
    ok: bool | None = None

    def cells(self):
        def shape(s):
            return "None" if s is None else str(tuple(s))

        err = "" if self.rel_error is None else f"{self.rel_error:.1e}"
        tol = "" if self.tolerance is None else f"{self.tolerance:.0e}"
        mark = {True: "ok", False: "WRONG", None: ""}[self.ok]
        return [self.name, shape(self.expected_shape), shape(self.got_shape), err, tol, mark]


_HEADER = ["output", "expected shape", "your shape", "rel. error", "tolerance", ""]


@dataclass
class Report:
    """What check() found. `passed` is what code tests; print it or show it in a notebook."""

    exercise: str
    passed: bool
    status: str  # "passed", "failed" or "not implemented yet"
    diagnosis: str
    rows: list = field(default_factory=list)
    case: str = ""  # the hidden case that failed (or "" when passed)
    cases_checked: int = 0
    cases_total: int = 0
    backend: str = "numpy"

    def _title(self):
        if self.status == STATUS_PASSED:
            return f"{self.exercise}: passed ({self.cases_total} hidden cases)"
        if self.status == STATUS_TODO:
            return f"{self.exercise}: not implemented yet"
        return f"{self.exercise}: FAILED on hidden case {self.cases_checked} of {self.cases_total} ({self.case})"

    def table(self):
        rows = [_HEADER] + [r.cells() for r in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def __str__(self):
        parts = [self._title()]
        if self.rows:
            parts.append(self.table())
        if self.diagnosis:
            parts.append(self.diagnosis)
        return "\n".join(parts)

    def __repr__(self):
        return str(self)

    def _repr_html_(self):
        colour = {STATUS_PASSED: "#1a7f37", STATUS_FAILED: "#cf222e", STATUS_TODO: "#9a6700"}[self.status]
        out = [f'<div class="vitlib-grade"><p style="color:{colour};font-weight:bold">{html.escape(self._title())}</p>']
        if self.rows:
            out.append('<table style="font-family:monospace;font-size:90%"><tr>')
            out += [f"<th>{html.escape(h)}</th>" for h in _HEADER]
            out.append("</tr>")
            for r in self.rows:
                style = ' style="color:#cf222e"' if r.ok is False else ""
                out.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r.cells()) + "</tr>")
            out.append("</table>")
        if self.diagnosis:
            out.append(f'<p style="white-space:pre-wrap">{html.escape(self.diagnosis)}</p>')
        out.append("</div>")
        return "".join(out)


class _Fail(Exception):
    def __init__(self, diagnosis, rows=()):
        super().__init__(diagnosis)
        self.diagnosis = diagnosis
        self.rows = list(rows)


# ------------------------------------------------------------------ conversions


def _is_tensor(a):
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def _to_backend(a, backend):
    if backend == "numpy" or a is None:
        return a
    import torch

    if isinstance(a, np.ndarray):
        return torch.tensor(a) if a.dtype.kind in "iu" else torch.tensor(a, dtype=torch.float64)
    if isinstance(a, dict):
        return {k: _to_backend(v, backend) for k, v in a.items()}
    return a


def _snapshot(a):
    """A comparable copy of an argument (arrays, tensors, dicts of them), or None if not an array."""
    if isinstance(a, np.ndarray):
        return a.copy()
    if _is_tensor(a):
        return a.detach().clone().numpy()
    if isinstance(a, dict):
        return {k: _snapshot(v) for k, v in a.items()}
    return None


def _changed(before, now):
    """Names (relative) of the arrays in `now` that differ from `before`."""
    if before is None:
        return []
    if isinstance(before, dict):
        return [
            f"[{k!r}]" + s
            for k, b in before.items()
            for s in _changed(b, now.get(k) if isinstance(now, dict) else None)
        ]
    cur = now.detach().numpy() if _is_tensor(now) else now
    if not isinstance(cur, np.ndarray) or cur.shape != before.shape:
        return [""]
    same = np.array_equal(cur, before, equal_nan=True) if cur.dtype.kind == "f" else np.array_equal(cur, before)
    return [] if same else [""]


def _as_array(name, a, exercise):
    """A returned value -> float ndarray, or _Fail naming what was returned instead."""
    if _is_tensor(a):
        a = a.detach().cpu()
        if a.dtype.is_complex or not a.dtype.is_floating_point:
            raise _Fail(f"Your {name} is a torch tensor of dtype {a.dtype}: a gradient is a float tensor.")
        import torch

        return a.numpy() if a.dtype in (torch.float32, torch.float64) else a.double().numpy()
    if isinstance(a, np.ndarray):
        if a.dtype not in (np.float32, np.float64):
            raise _Fail(
                f"Your {name} has dtype {a.dtype}; return float64 (or float32). An integer or object array "
                "usually means it was built from Python ints or lists: start from np.zeros_like(X) or an "
                "expression of the inputs."
            )
        return a
    if isinstance(a, (list, tuple)):
        raise _Fail(
            f"Your {name} is a Python {type(a).__name__}, not an array: wrap it in np.array(...) (or build it "
            "with numpy operations)."
        )
    if a is None:
        raise _Fail(f"Your {name} is None, but this case needs it: return the array.")
    raise _Fail(f"Your {name} is a {type(a).__name__}; {exercise} must return numpy arrays (or torch tensors).")


# ------------------------------------------------------------------ parsing a returned value


def _parse(ex, out, args, expected=None):
    """A returned value -> (outputs: {name: ndarray or None}, intermediates: {name: ndarray}).
    `expected` (the reference's parse) says where None is right."""
    fname = ex.name
    inter = {}
    if ex.kind == "array":
        return {ex.outputs[0]: _as_array(ex.outputs[0], out, fname)}, inter
    if ex.kind == "flat":
        segs, total = flat_segments(args)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            out, inter = out
            allowed = _intermediates(ex, args)
            bad = [k for k in inter if k not in allowed]
            if bad:
                raise _Fail(f"Your intermediates dict has unknown keys {bad}; allowed: {allowed}.")
            inter = {k: _as_array("d" + k, v, fname) for k, v in inter.items()}
        flat = _as_array("result", out, fname)
        if flat.ndim != 1 or flat.size != total:
            raise _Fail(
                f"Your vit_train_step returned shape {flat.shape}; it must return ONE flat vector of all "
                f"{total} updated weights, concat(w_proj, cls_token, pos_embed, blocks_weights, w_head), each "
                "flattened (ravel) in that order."
            )
        return {name: flat[a:b].reshape(shape) for name, a, b, shape, _ in segs}, inter
    if ex.kind == "dict":
        if not isinstance(out, dict):
            raise _Fail(
                f"{fname} must return a dict {{'X': dX, 'W_q': dW_q, ...}} keyed by the FORWARD names "
                f"(every key of p, plus 'X'); you returned a {type(out).__name__}."
            )
        missing = [k for k in ex.outputs if k not in out]
        unknown = [k for k in out if k not in ex.outputs and k not in ex.intermediates]
        if unknown:
            hint = ""
            if any(str(k).startswith("d") and str(k)[1:] in ex.outputs + ex.intermediates for k in unknown):
                hint = " Keys are the forward names without the 'd': 'W_q', not 'dW_q'."
            raise _Fail(
                f"Your dict has keys {unknown} that {fname} does not know.{hint} Required keys: "
                f"{list(ex.outputs)}; optional intermediates: {list(ex.intermediates)}."
            )
        if missing:
            raise _Fail(
                f"Your dict is missing the key(s) {missing}: {fname} returns a gradient for 'X' and every key of p."
            )
        res = {k: out[k] for k in ex.outputs}
        inter = {k: out[k] for k in ex.intermediates if k in out}
    else:
        n = len(ex.outputs)
        if not isinstance(out, (tuple, list)) or isinstance(out, np.ndarray):
            raise _Fail(
                f"{fname} must return a tuple of {n}: ({', '.join(ex.outputs)}); you returned a {type(out).__name__}."
            )
        out = tuple(out)
        if ex.intermediates and len(out) == n + 1 and isinstance(out[-1], dict):
            inter = dict(out[-1])
            bad = [k for k in inter if k not in ex.intermediates]
            if bad:
                raise _Fail(f"Your intermediates dict has unknown keys {bad}; allowed: {list(ex.intermediates)}.")
            out = out[:-1]
        if len(out) != n:
            raise _Fail(f"{fname} must return {n} values ({', '.join(ex.outputs)}); you returned {len(out)}.")
        res = dict(zip(ex.outputs, out))
    parsed = {}
    for k, v in res.items():
        want_none = expected is not None and expected[k] is None
        if want_none:
            if v is not None:
                parsed[k] = _NotNone(v)
            else:
                parsed[k] = None
            continue
        if v is None and expected is None:
            parsed[k] = None
            continue
        parsed[k] = _as_array(_label(ex, k), v, fname)
    inter = {k: _as_array("d" + k, v, fname) for k, v in inter.items()}
    return parsed, inter


class _NotNone:
    """Marks an output that should be None (gamma or b absent) but was not."""

    def __init__(self, v):
        self.v = v


def _label(ex, k):
    return "d" + k if ex.kind == "dict" else k


# ------------------------------------------------------------------ errors


def rel_error(a, b):
    """max|a - b| / max(max|a|, max|b|), vitlib's definition; inf when a holds NaN or inf."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    if not np.all(np.isfinite(a)):
        return float("inf")
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def _tol(ex, arr):
    return ex.tol32 if arr.dtype == np.float32 else ex.tol64


def _compare_value(got, exp, base):
    if base is not None:
        return rel_error(np.asarray(got, dtype=np.float64) - base, exp - base)
    return rel_error(got, exp)


def _bases(ex, args, names):
    """For step exercises: the argument each output's step is measured from."""
    if ex.kind == "flat":
        segs, _ = flat_segments(args)
        return {name: np.asarray(a, dtype=np.float64) for name, _, _, _, a in segs}
    return {o: np.asarray(args[names.index(a)], dtype=np.float64) for o, a in ex.updates.items()}


# ------------------------------------------------------------------ the reader's traceback


def _reader_frame(tb):
    """The deepest frame of the traceback that is the reader's code (not numpy/torch/python's, not
    vitlib's); failing that, the deepest frame that is not the grader's."""
    frames = traceback.extract_tb(tb)
    skip = {os.path.normcase(os.path.abspath(p)) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}

    def library(f):
        fn = os.path.normcase(os.path.abspath(f.filename))
        return any(fn.startswith(p + os.sep) for p in skip) or "site-packages" in fn or fn.startswith(_VITLIB_DIR)

    for f in reversed(frames):
        if not library(f):
            return f
    for f in reversed(frames):
        if not os.path.normcase(os.path.abspath(f.filename)).startswith(_GRADE_DIR + os.sep + "engine"):
            return f
    return frames[-1] if frames else None


def _where(frame):
    if frame is None:
        return ""
    name = os.path.basename(frame.filename)
    if "ipykernel" in frame.filename or name.startswith("<ipython-input"):
        name = "your notebook cell"
    line = (frame.line or "").strip()
    return f"line {frame.lineno} of {name}, in {frame.name}:\n    {line}"


def _exception_diagnosis(ex, exc, frame):
    kind = type(exc).__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"Your function raised {kind}: {msg}\nat {_where(frame)}" if frame else f"Your function raised {kind}: {msg}"
    line = (frame.line or "") if frame else ""
    hints = []
    if re.search(r"\.T\b", line) and isinstance(exc, ValueError):
        hints.append(
            "`.T` reverses EVERY axis: on a 4-D array (N, H, T, D_h) it gives (D_h, T, H, N), not the "
            "transpose of each matrix. Swap only the last two axes: K.transpose(0, 1, 3, 2) or K.swapaxes(-1, -2)."
        )
    if isinstance(exc, ValueError) and ("matmul" in msg or "shapes" in msg or "broadcast" in msg) and not hints:
        hints.append(
            "Write the shape of every array in that line next to it: the gradient of a (a, b) @ (b, c) product "
            "has the shapes of its factors, and that tells you which operand to transpose."
        )
    if isinstance(exc, (TypeError, AttributeError)) and ("NoneType" in msg):
        hints.append("One of the inputs is None in this case (no bias, or no gamma/beta): handle that case.")
    return text + ("\n" + " ".join(hints) if hints else "")


# ------------------------------------------------------------------ diagnosis of a wrong value


def _value_hint(ex, name, got, exp, base, args, arg_names, tol):
    """A generic diagnosis from the numbers alone (used when no catalogued mistake matches)."""
    label = _label(ex, name)
    raw = np.asarray(got, dtype=np.float64)
    g = raw.copy()
    e = np.asarray(exp, dtype=np.float64)
    if base is not None:
        g, e = g - base, e - base
    if not np.all(np.isfinite(g)):
        return (
            "It contains NaN or inf. Usually an exp() overflowed (shift by the row max before exp), "
            "a division by zero, or an uninitialised np.empty array."
        )
    if not np.any(raw):
        return "It is all zeros: nothing reached it. Check that the value you compute is the one you return."
    if base is not None and not np.any(g):
        return f"It equals the old {label}: the step leaves it unchanged."
    for an, a in zip(arg_names, args):
        if isinstance(a, np.ndarray) and a.shape == got.shape and np.array_equal(raw, a):
            return f"It is exactly the input `{an}`, returned unchanged: the backward rule is still missing."
    ee = float((e * e).sum())
    if ee > 0:
        c = float((g * e).sum() / ee)
        if abs(c) > 1e-12 and rel_error(g, c * e) < max(tol * 10, 1e-6) and abs(c - 1) > tol * 10:
            return " ".join(
                t
                for t in (
                    ("Its step (new - old) is the right step" if base is not None else "It is the right answer")
                    + f" times {c:.4g}: the rule is right up to a constant.",
                    _factor_hint(c, args, arg_names),
                )
                if t
            )
    if g.ndim == 2 and g.shape[0] == g.shape[1] and rel_error(g.T, e) < tol * 10:
        return (
            "It is the transpose of the right one. A gradient has the shape of its variable: dW is "
            "(Din, Dout) like W, X^T dY, not dY^T X. A square matrix hides the transpose; the numbers do not."
        )
    return ""


def _factor_hint(c, args, arg_names):
    known = {}
    for an, a in zip(arg_names, args):
        if isinstance(a, np.ndarray) and a.ndim >= 1:
            known.setdefault(a.shape[0], an)
    if c < 0:
        if abs(c + 1) < 1e-3:
            return "The sign is flipped: the gradient points uphill (did you subtract in the wrong order?)."
        return "The sign is flipped and the size is off."
    for n in sorted(known):
        if n > 1 and abs(c - n) < 1e-6 * n:
            return f"The factor is {n}, a size of this case: a 1/{n} (a mean, not a sum) is missing."
        if n > 1 and abs(c - 1.0 / n) < 1e-6:
            return f"The factor is 1/{n}, a size of this case: you divide by {n} once too often."
    if abs(c - 2) < 1e-6 or abs(c - 0.5) < 1e-6:
        return "A factor of 2 is off (e.g. 2 eps vs eps in a central difference)."
    return ""


def _intermediates(ex, args):
    """The intermediates the reader may return, in backward order (the step's depend on its depth)."""
    return seed_intermediates(args[5].shape[0]) if ex.kind == "flat" else list(ex.intermediates)


def _dname(k):
    """'U' -> 'dU'; 'blocks[1].gelu_out' -> 'blocks[1].dgelu_out'."""
    head, _, leaf = k.rpartition(".")
    return f"{head}.d{leaf}" if head else f"d{leaf}"


def _intermediate_hint(ex, inter, ref_inter, tor_inter, order):
    """The first returned intermediate, in backward order, that is wrong."""
    good = []
    for k in order:
        if k not in inter:
            continue
        got = inter[k]
        exp = ref_inter.get(k)
        if exp is None:
            continue
        got_aligned, exp_aligned = _align(got, exp)
        if got_aligned is None:
            return f"Your intermediate {_dname(k)} has shape {got.shape}; expected {exp.shape}" + (
                " (heads split, (N, H, T, D_h), or merged, (N, T, H*D_h))" if exp.ndim == 4 else ""
            )
        err = rel_error(got_aligned, exp_aligned)
        if tor_inter is not None and k in tor_inter:
            err = max(err, rel_error(*_align(got, tor_inter[k])))
        if err > _tol(ex, got):
            ok = ""
            if good:
                ok = f" ({', '.join(_dname(g) for g in good)} before it {'are' if len(good) > 1 else 'is'} right)"
            return (
                f"The first wrong intermediate is {_dname(k)}{ok}: the mistake is in the step that computes "
                f"{_dname(k)} (rel. error {err:.1e}). {_STEP.get(k.rsplit('.', 1)[-1], '')}"
            ).strip()
        good.append(k)
    return ""


_STEP = {
    "Y_mlp": "It is the gradient arriving at the MLP's output: check the residual/LayerNorm step above it.",
    "G": "dG = dY_mlp W_2^T.",
    "U": "dU = dG * gelu'(U): the GELU backward.",
    "Z2": "dZ2 = dU W_1^T.",
    "X1": "dX1 = dY + LN2's backward of dZ2 (the residual adds).",
    "R2": "dR2 is LN2's backward of dY.",
    "R1": "dR1 is LN1's backward of dX1.",
    "Y_attn": "The gradient arriving at the attention output (through the residual).",
    "O": "dO = dY_attn W_o^T.",
    "A": "dA = dO V^T, per head (heads split first).",
    "V": "dV = A^T dO, per head.",
    "S": "dS = A * (dA - rowsum(dA * A)): the softmax backward.",
    "K": "dK = dS^T Q / sqrt(D_h).",
    "Q": "dQ = dS K / sqrt(D_h).",
    "Z1": "dZ1 is the attention's dX: dQ W_q^T + dK W_k^T + dV W_v^T.",
    # the coding exercise's names
    "logits": "dlogits = (probs - one_hot(y)) / N.",
    "cls_repr": "dcls_repr = dlogits @ w_head^T.",
    "ffn_out": "d_ffn_out = dseq, the gradient arriving through the residual add.",
    "gelu_out": "dgelu_out = d_ffn_out @ w_mlp2^T.",
    "norm2": "dnorm2 = (dgelu_out * gelu'(norm2 @ w_mlp1)) @ w_mlp1^T, gelu the tanh form.",
    "attn_out": "dattn_out = dseq after the FFN's LayerNorm backward is added back (residual 1).",
    "attn": "dattn = dO V^T per head, dO = dattn_out @ w_o^T split into heads.",
    "norm1": "dnorm1 = dQ w_q^T + dK w_k^T + dV w_v^T.",
    "patches": "dpatches = dseq[:, 1:], the rows after the cls token.",
}


def _align(got, exp):
    """Compare an intermediate in the layout the reader chose: heads split (N, H, T, D_h), merged
    (N, T, H*D_h), or with a head axis of 1 dropped."""
    if got.shape == exp.shape:
        return got, exp
    if exp.ndim == 4:
        N, H, T, Dh = exp.shape
        merged = exp.transpose(0, 2, 1, 3).reshape(N, T, H * Dh)
        if got.shape == merged.shape:
            return got, merged
        if H == 1 and got.shape == (N, T, Dh):
            return got, exp[:, 0]
    return None, None


def _shape_hint(ex, name, got_shape, exp_shape):
    label = _label(ex, name)
    text = f"Your {label} has shape {tuple(got_shape)}, expected {tuple(exp_shape)}."
    if len(got_shape) == len(exp_shape) and tuple(got_shape) == tuple(exp_shape)[::-1]:
        text += (
            f" It is transposed: a gradient always has the shape of its variable, so d{name.lstrip('d')} "
            "must be shaped like the weight itself (for Y = X W that is X^T dY, not dY^T X)."
        )
    elif len(got_shape) > len(exp_shape) and tuple(got_shape[-len(exp_shape) :]) == tuple(exp_shape):
        text += (
            " It still has the batch axes: a parameter used by every example (and every token) gets the SUM "
            "of their gradients, so sum over the leading axes."
        )
    elif int(np.prod(got_shape)) == int(np.prod(exp_shape)):
        text += f" It has the right number of entries: reshape it back to {tuple(exp_shape)} before returning it."
    elif len(got_shape) < len(exp_shape):
        text += " An axis is missing: did you sum over an axis that the variable has?"
    return text


def _mistake_matches(ex, args, arg_names, got, tol):
    """The first catalogued mistake whose output on this case equals the reader's (all outputs)."""
    for m in _mistakes.candidates(ex.name):
        try:
            out = m.run(copy.deepcopy(args))
            parsed, _ = _parse(ex, out, args)
        except Exception:
            continue
        if _same_outputs(ex, parsed, got, tol, args, arg_names):
            return m
    return None


def _same_outputs(ex, a, b, tol, args, arg_names):
    bases = _bases(ex, args, arg_names)
    for k in ex.outputs if ex.kind != "flat" else a.keys():
        x, y = a.get(k), b.get(k)
        if x is None or y is None or isinstance(y, _NotNone):
            if not (x is None and y is None):
                return False
            continue
        if x.shape != y.shape:
            return False
        if _compare_value(y, np.asarray(x, dtype=np.float64), bases.get(k)) > tol:
            return False
    return True


# ------------------------------------------------------------------ one case


def _run_case(ex, fn, case, backend):
    args, names = case.args, case.arg_names
    clean = copy.deepcopy(args)
    call_args = tuple(_to_backend(a, backend) for a in copy.deepcopy(args))
    before = [_snapshot(a) for a in call_args]
    calls = []
    try:
        with hand_written_only(calls):
            out = fn(*call_args)
    except NotImplementedError:
        if not calls:
            return "todo", None
        out = None
    except Exception as exc:  # the reader's bug: report it at their line
        if calls or isinstance(exc, HandWrittenOnly):
            out = None
        elif isinstance(exc, TypeError) and len(traceback.extract_tb(exc.__traceback__)) == 1:
            # raised by the call itself, before any line of the reader's code ran
            raise _Fail(
                f"The check calls {ex.signature.split(' ->')[0]}, and your function does not take those "
                f"arguments: {exc}. Keep the signature of the exercise."
            ) from None
        else:
            raise _Fail(_exception_diagnosis(ex, exc, _reader_frame(exc.__traceback__))) from None
    if calls:
        raise _Fail(
            f"Your function called {calls[0]}. The point of this exercise is to write the backward by hand, "
            "with the chain rule: autograd is not allowed inside it (it is what the grader checks you against)."
        )
    changed = [names[i] + s for i, (b, a) in enumerate(zip(before, call_args)) for s in _changed(b, a)]

    ref_out = _reference.REFERENCES[ex.name](*copy.deepcopy(clean))
    expected, ref_inter = _parse(ex, ref_out, clean)
    if ex.kind == "dict":
        ref_inter = {k: v for k, v in ref_out.items() if k in ex.intermediates}
    got, inter = _parse(ex, out, clean, expected)
    if inter and ex.kind == "tuple":
        ref_inter = _reference.intermediates(ex.name, copy.deepcopy(clean))
    tor, tor_inter = _oracle(ex, clean, want_intermediates=bool(inter))
    if ex.kind == "flat":  # vitlib's step does not expose its intermediates: torch's localise
        ref_inter = tor_inter or {}

    bases = _bases(ex, clean, names)
    rows, first_bad = [], None
    for k in ex.rows_order if ex.kind != "flat" else list(expected):
        e, g = expected[k], got[k]
        if e is None:
            ok = g is None
            rows.append(Row(_label(ex, k), None, None if g is None else np.shape(g.v), None, None, ok))
            if not ok and first_bad is None:
                first_bad = (k, "none")
            continue
        if g.shape != e.shape:
            rows.append(Row(_label(ex, k), e.shape, g.shape, None, None, False))
            if first_bad is None:
                first_bad = (k, "shape")
            continue
        rows.append(Row(_label(ex, k), e.shape, g.shape, None, _tol(ex, g), None))
    # shapes before values: the first shape problem is reported with every row's shape
    if first_bad is not None:
        for r in rows:
            r.tolerance = None
        k, what = first_bad
        if what == "none":
            which = {"db": "b", "dgamma": "gamma", "dbeta": "beta", "db_patch": "b_patch"}.get(k, "its variable")
            raise _Fail(
                f"Your {_label(ex, k)} should be None in this case: {which} is None, so it has no gradient.", rows
            )
        raise _Fail(_shape_hint(ex, k, got[k].shape, expected[k].shape), rows)

    for r, k in zip(rows, [k for k in (ex.rows_order if ex.kind != "flat" else list(expected))]):
        e, g = expected[k], got[k]
        if e is None:
            continue
        err = _compare_value(g, e, bases.get(k))
        ok = err <= r.tolerance
        if tor is not None and tor.get(k) is not None:
            terr = _compare_value(g, tor[k], bases.get(k))
            if ex.torch_tol is not None:  # vitlib's answer is itself approximate (finite differences):
                ok = ok and terr <= max(ex.torch_tol, r.tolerance)  # torch's exact one is held to its own bound
            else:
                err = max(err, terr)
                ok = err <= r.tolerance
        r.rel_error = err
        r.ok = bool(ok)
    bad = [
        (r, k)
        for r, k in zip(rows, ex.rows_order if ex.kind != "flat" else list(expected))
        if not r.ok and r.ok is not None
    ]
    if bad:
        r, k = bad[0]
        tol = r.tolerance
        if changed:
            raise _Fail(_inplace_text(changed), rows)
        m = _mistake_matches(ex, clean, names, got, tol)
        others = ", ".join(r2.name for r2, _ in bad[1:])
        detail = f"rel. error {r.rel_error:.1e}, tolerance {tol:.0e}" + (f"; also wrong: {others}" if others else "")
        first = " (the first wrong weight walking back from the loss)" if ex.kind == "flat" else ""
        if m is not None:
            raise _Fail(f"{m.text} ({r.name}{first}: {detail}.)", rows)
        parts = [f"Your {r.name} is wrong{first}: {detail}."]
        parts.append(_value_hint(ex, k, got[k], expected[k], bases.get(k), clean, names, tol))
        order = _intermediates(ex, clean)
        if inter:
            parts.append(_intermediate_hint(ex, inter, ref_inter, tor_inter, order))
        elif ex.kind == "flat":
            parts.append(
                "To find where inside a block, return (flat, {name: gradient}) with some of "
                + ", ".join(f"'{i}'" for i in order[:8])
                + ", ...: the check names the first wrong one."
            )
        elif ex.intermediates:
            parts.append(
                "To find where, return your intermediate gradients too ("
                + ", ".join(f"'{i}'" for i in order)
                + "): the check names the first wrong one."
            )
        raise _Fail(" ".join(p for p in parts if p), rows)
    if changed:
        raise _Fail(_inplace_text(changed), rows)
    return "ok", rows


def _inplace_text(changed):
    return (
        f"Your function modified its input {', '.join('`' + c + '`' for c in changed)} in place (for example "
        "`X -= mean`, `x[i] += eps` without restoring it exactly, or `dY *= gamma`). The caller still needs it: "
        "write `Xc = X - mean` (a new array), or work on a copy (`x = x.copy()`)."
    )


def _torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _oracle(ex, args, want_intermediates=False):
    """torch autograd's answer, parsed, or (None, None) when torch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, None
    from vit_oracles.exercises import ORACLES, vit_train_step_intermediates

    if ex.kind == "flat" and want_intermediates:
        out = vit_train_step_intermediates(*copy.deepcopy(args))
    else:
        out = ORACLES[ex.name](*copy.deepcopy(args))
    parsed, inter = _parse(ex, out, args)
    if ex.kind == "dict":
        inter = {k: v for k, v in out.items() if k in ex.intermediates}
    return parsed, inter


# ------------------------------------------------------------------ check


def check(name, fn, *, seed=0, backend="numpy"):
    """Grade the reader's `fn` for exercise `name` on hidden random cases drawn from `seed`.

    backend "numpy" passes float64 numpy arrays; "torch" passes float64 torch tensors. Either way
    the function may return numpy arrays or torch tensors. Returns a Report; never raises for a
    wrong, unfinished or crashing `fn`.
    """
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; the exercises are {sorted(EXERCISES)}")
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    ex = EXERCISES[name]
    cases = make_cases(name, seed)
    worst = {}
    for i, case in enumerate(cases, 1):
        try:
            status, rows = _run_case(ex, fn, case, backend)
        except _Fail as f:
            return Report(name, False, STATUS_FAILED, f.diagnosis, f.rows, case.label, i, len(cases), backend)
        if status == "todo":
            return Report(
                name,
                False,
                STATUS_TODO,
                f"`{name}` still raises NotImplementedError: write its body (replace the raise), then run this "
                "check again.",
                [],
                "",
                0,
                len(cases),
                backend,
            )
        for r in rows:
            w = worst.get(r.name)
            if w is None or (r.rel_error or 0) > (w.rel_error or 0):
                worst[r.name] = r
    rows = list(worst.values())
    errs = [r.rel_error for r in rows if r.rel_error is not None]
    oracles = "vitlib and torch autograd" if _torch_available() else "vitlib (torch is not installed)"
    diag = f"Every output matches {oracles} on all {len(cases)} hidden cases"
    diag += f" (largest rel. error {max(errs):.1e})." if errs else "."
    return Report(name, True, STATUS_PASSED, diag, rows, "", len(cases), len(cases), backend)
