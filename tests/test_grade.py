"""vitlib.grade: the reference passes, wrong answers fail, and each known mistake is named.

A grader that passes a wrong answer is the worst bug this project can have, so every exercise is
checked against at least three wrong solutions (zeros, the inputs returned unchanged, a random
array of the right shape), every catalogued mistake and every bug-zoo bug that applies to it.
"""

import copy

import numpy as np
import pytest
import torch

import vitlib.grade as G
from vitlib import rel_error
from vitlib.grade import cases, engine, mistakes, reference
from vitlib.grade.exercises import EXERCISES

NAMES = list(EXERCISES)


def _map(out, f):
    """Apply f to every array of a returned structure (None stays None)."""
    if isinstance(out, tuple):
        return tuple(_map(o, f) for o in out)
    if isinstance(out, dict):
        return {k: _map(v, f) for k, v in out.items()}
    if out is None:
        return None
    return f(out)


def _ref(name):
    return reference.REFERENCES[name]


def _first_case(name):
    return cases.make_cases(name)[0]


def _drop_intermediates(name, out):
    ex = EXERCISES[name]
    if ex.kind == "dict":
        return {k: out[k] for k in ex.outputs}
    return out


# ------------------------------------------------------------------ the right answer passes


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name):
    report = G.check(name, _ref(name))
    assert report.passed, str(report)
    assert report.status == "passed"
    assert all(r.ok for r in report.rows)
    assert max(r.rel_error for r in report.rows if r.rel_error is not None) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_reference_agrees_with_torch(name):
    """The two oracles agree (float64, < 1e-10; central differences against the exact gradient < 1e-6)."""
    from vit_oracles.exercises import ORACLES

    ex = EXERCISES[name]
    for case in cases.make_cases(name):
        ours, _ = engine._parse(ex, _ref(name)(*copy.deepcopy(case.args)), case.args)
        theirs, _ = engine._parse(ex, ORACLES[name](*copy.deepcopy(case.args)), case.args)
        bases = engine._bases(ex, case.args, case.arg_names)
        for k, v in ours.items():
            if v is None:
                assert theirs[k] is None or not np.any(theirs[k])
                continue
            err = engine._compare_value(v, theirs[k], bases.get(k))
            assert err < (ex.torch_tol or 1e-10), (name, case.label, k, err)


# ------------------------------------------------------------------ three wrong answers fail


def _wrong_zeros(name):
    return lambda *a: _map(_drop_intermediates(name, _ref(name)(*copy.deepcopy(a))), np.zeros_like)


def _wrong_random(name):
    rng = np.random.default_rng(1)
    return lambda *a: _map(
        _drop_intermediates(name, _ref(name)(*copy.deepcopy(a))), lambda v: rng.standard_normal(v.shape)
    )


def _wrong_unchanged(name):
    """The inputs handed back: output i is the i-th array argument (a stub `return dY, X, W`)."""
    ex = EXERCISES[name]

    def fn(*a):
        arrays = [v for v in a if isinstance(v, np.ndarray)]
        if ex.kind == "flat":
            return np.concatenate([np.asarray(a[2:7][i]).ravel() for i in range(5)])
        if ex.kind == "dict":
            return {"X": a[0], **a[2]}
        if ex.kind == "array":
            return arrays[0]
        return tuple(arrays[i % len(arrays)] for i in range(len(ex.outputs)))

    return fn


@pytest.mark.parametrize("wrong", ["zeros", "random", "unchanged"])
@pytest.mark.parametrize("name", NAMES)
def test_wrong_answers_fail(name, wrong):
    fn = {"zeros": _wrong_zeros, "random": _wrong_random, "unchanged": _wrong_unchanged}[wrong](name)
    report = G.check(name, fn)
    assert not report.passed and report.status == "failed", str(report)
    assert report.diagnosis
    if wrong == "zeros":
        assert "all zeros" in report.diagnosis or "shape" in report.diagnosis, report.diagnosis


def test_diagnosis_of_returned_input():
    report = G.check("gelu_erf_backward", lambda dY, X: dY)
    assert not report.passed
    assert "It is exactly the input `dY`" in report.diagnosis


# ------------------------------------------------------------------ every mistake, named

_SHAPE_MISTAKES = {
    "linear_dW_transposed": "It is transposed",
    "attention_head_backward_QKT_4d": "`.T` reverses EVERY axis",
    "attention_backward_QKT_4d": "`.T` reverses EVERY axis",
}


def _key(args):
    return next(a.tobytes() for a in args if isinstance(a, np.ndarray))


@pytest.mark.parametrize("mistake", list(mistakes.OWN))
def test_each_mistake_is_named(mistake):
    m = mistakes.OWN[mistake]
    # answers computed before the check: a few mistakes are built on the torch oracle, and the
    # check refuses autograd inside the reader's function
    table = {}
    for case in cases.make_cases(m.exercise):
        try:
            table[_key(case.args)] = m.fn(*copy.deepcopy(case.args))
        except Exception:  # a mistake that crashes (Q @ K.T on 4-D) runs inside the check
            pass
    report = G.check(m.exercise, (lambda *a: table[_key(a)]) if table else m.fn)
    assert not report.passed, str(report)
    expected = _SHAPE_MISTAKES.get(mistake, m.text)
    assert expected in report.diagnosis, report.diagnosis


def test_transposed_dW_named_on_a_square_case():
    """A square W hides the transposed dW from the shape check: the numbers still name it."""
    square = [c for c in cases.make_cases("linear_backward") if c.extra.get("square")]
    assert square
    with pytest.raises(engine._Fail) as e:
        engine._run_case(EXERCISES["linear_backward"], mistakes.OWN["linear_dW_transposed"].fn, square[0], "numpy")
    assert mistakes.OWN["linear_dW_transposed"].text in e.value.diagnosis


def _zoo_pairs():
    """(exercise, bug) for every zoo bug that changes the exercise's answer on one of its cases."""
    pairs = []
    for name in NAMES:
        ex = EXERCISES[name]
        for bug_name, _ in reference.zoo_bugs():
            for case in cases.make_cases(name):
                ref, _ = engine._parse(ex, _ref(name)(*copy.deepcopy(case.args)), case.args)
                try:
                    with reference.zoo_injected(bug_name):
                        out = _ref(name)(*copy.deepcopy(case.args))
                except Exception:
                    continue
                bad, _ = engine._parse(ex, out, case.args)
                if any(v is not None and rel_error(v, bad[k]) > 1e-6 for k, v in ref.items()):
                    pairs.append((name, bug_name))
                    break
    return pairs


ZOO_PAIRS = _zoo_pairs()

# the zoo bugs each exercise must diagnose (more may apply as the zoo grows)
EXPECTED_ZOO = {
    ("layernorm_backward", "layernorm_backward_no_mean_term"),
    ("softmax_backward", "softmax_backward_no_subtraction"),
    ("gelu_erf_backward", "gelu_backward_no_product_rule"),
    ("gelu_tanh_backward", "gelu_backward_no_product_rule"),
    ("linear_backward", "linear_backward_missing_transpose"),
    ("attention_head_backward", "attention_backward_dK_missing_transpose"),
    ("attention_backward", "attention_backward_heads_not_permuted"),
    ("attention_backward", "attention_backward_dK_missing_transpose"),
    ("preln_block_backward", "block_backward_residual_forgotten"),
    ("tokens_backward", "tokens_backward_not_summed"),
    ("vit_train_step", "tokens_backward_not_summed"),
    ("vit_train_step", "attention_backward_heads_not_permuted"),
    ("vit_train_step", "attention_backward_dK_missing_transpose"),
    ("vit_train_step", "softmax_backward_no_subtraction"),
    ("vit_train_step", "layernorm_backward_no_mean_term"),
    ("vit_train_step", "gelu_backward_no_product_rule"),
    ("vit_train_step", "block_backward_residual_forgotten"),
}


def test_zoo_bugs_apply_where_expected():
    missing = EXPECTED_ZOO - set(ZOO_PAIRS)
    assert not missing, f"zoo bugs that no longer reach the grader: {sorted(missing)}"


@pytest.mark.parametrize("name,bug", ZOO_PAIRS)
def test_each_zoo_bug_is_named(name, bug):
    m = mistakes.ZooMistake(bug, name, "")
    report = G.check(name, lambda *a: m.run(a))
    if not report.passed and "linear_backward_missing_transpose" == bug and name == "linear_backward":
        pass  # the non-square cases turn this one into a shape error, reported at the reader's line
    assert not report.passed, str(report)
    text = mistakes.ZOO_TEXT.get(bug, f"`{bug}`")
    if "raised" not in report.diagnosis:
        assert text in report.diagnosis, report.diagnosis


def test_wrong_mlp2_hint_is_named():
    report = G.check("vit_train_step", mistakes.OWN["seed_wrong_dw_mlp2_hint"].fn)
    assert "the exercise's own hint, which is wrong" in report.diagnosis
    assert "blocks[1].w_mlp2" in report.diagnosis  # the first wrong weight walking back from the loss


# ------------------------------------------------------------------ dtypes and backends


def _to32(a):
    if isinstance(a, np.ndarray) and a.dtype == np.float64:
        return a.astype(np.float32)
    if isinstance(a, dict):
        return {k: _to32(v) for k, v in a.items()}
    return a


@pytest.mark.parametrize("name", NAMES)
def test_correct_float32_solution_passes(name):
    def fn(*a):
        if name == "numerical_gradient":  # float32 central differences at eps=1e-5 are noise: cast after
            return _ref(name)(*a).astype(np.float32)
        return _map(_ref(name)(*[_to32(v) for v in a]), lambda v: np.asarray(v, dtype=np.float32))

    report = G.check(name, fn)
    assert report.passed, str(report)
    assert all(r.tolerance == EXERCISES[name].tol32 for r in report.rows if r.tolerance is not None)


def _to_np(a):
    if isinstance(a, torch.Tensor):
        return a.numpy().copy()
    if isinstance(a, dict):
        return {k: _to_np(v) for k, v in a.items()}
    return a


@pytest.mark.parametrize("name", NAMES)
def test_correct_torch_solution_passes(name):
    seen = []

    def fn(*a):
        seen.extend(type(v).__name__ for v in a if isinstance(v, torch.Tensor))
        if name == "numerical_gradient":
            return torch.from_numpy(_ref(name)(a[0], a[1].numpy(), a[2]))
        return _map(_ref(name)(*[_to_np(v) for v in a]), torch.from_numpy)

    report = G.check(name, fn, backend="torch")
    assert report.passed, str(report)
    assert seen and set(seen) == {"Tensor"}


def test_torch_written_solution_passes():
    def linear_backward(dY, X, W, b):
        dX = dY @ W.T
        dW = X.reshape(-1, X.shape[-1]).T @ dY.reshape(-1, dY.shape[-1])
        db = None if b is None else dY.reshape(-1, dY.shape[-1]).sum(0)
        return dX, dW, db

    assert G.check("linear_backward", linear_backward, backend="torch").passed


# ------------------------------------------------------------------ no autograd, no in-place edits


@pytest.mark.parametrize("name", NAMES)
def test_autograd_fails(name):
    def fn(*a):
        t = torch.ones(2, requires_grad=True)
        (t * t).sum().backward()
        return _ref(name)(*a)

    report = G.check(name, fn)
    assert not report.passed
    assert "Tensor.backward()" in report.diagnosis and "autograd is not allowed" in report.diagnosis


def test_autograd_grad_and_func_fail_and_are_restored():
    def layernorm_backward(dY, X, gamma, beta, eps):
        Xt = torch.tensor(X, requires_grad=True)
        g = torch.tensor(gamma) if gamma is not None else None
        b = torch.tensor(beta) if beta is not None else None
        Y = torch.nn.functional.layer_norm(Xt, (X.shape[-1],), g, b, eps)
        (dX,) = torch.autograd.grad(Y, Xt, torch.tensor(dY))
        return dX.numpy(), None, None

    report = G.check("layernorm_backward", layernorm_backward)
    assert not report.passed and "torch.autograd.grad" in report.diagnosis
    report = G.check("sgd_step", lambda w, g, lr: torch.func.grad(lambda t: (t * t).sum())(torch.tensor(w)).numpy())
    assert not report.passed and "torch.func.grad" in report.diagnosis
    t = torch.ones(2, requires_grad=True)
    (t * t).sum().backward()  # autograd works again after the check
    assert torch.equal(t.grad, 2 * torch.ones(2))


def _first_array(a):
    for v in a:
        if isinstance(v, np.ndarray) and v.size:
            return v
        if isinstance(v, dict):
            return next(iter(x for x in v.values() if isinstance(x, np.ndarray)))
    raise AssertionError("no array argument")


@pytest.mark.parametrize("name", NAMES)
def test_modified_input_fails(name):
    def fn(*a):
        out = _ref(name)(*copy.deepcopy(a))
        arr = _first_array(a)
        arr[...] = arr * 1.5 + 1.0  # an in-place edit of a caller's array
        return out

    report = G.check(name, fn)
    assert not report.passed
    assert "modified its input" in report.diagnosis and "in place" in report.diagnosis


def test_inplace_centering_fails():
    report = G.check("layernorm_backward", mistakes.INPLACE.fn)
    assert not report.passed
    assert "modified its input `X` in place" in report.diagnosis


# ------------------------------------------------------------------ unfinished and crashing


@pytest.mark.parametrize("name", NAMES)
def test_not_implemented(name):
    def fn(*a):
        raise NotImplementedError("write this")

    report = G.check(name, fn)
    assert report.status == "not implemented yet" and not report.passed
    assert "not implemented yet" in str(report) and "not implemented yet" in report._repr_html_()


def test_exception_points_at_the_readers_line():
    def softmax_backward(dA, S):
        A = np.exp(S) / np.exp(S).sum(axis=-1, keepdims=True)
        return A * (dA - (dA * A).sum(axis=-1, keepdims=True)) @ np.ones((3, 3))  # the reader's bug

    report = G.check("softmax_backward", softmax_backward)
    assert not report.passed
    assert "test_grade.py, in softmax_backward" in report.diagnosis
    assert "@ np.ones((3, 3))  # the reader's bug" in report.diagnosis
    assert "engine.py" not in report.diagnosis


def test_wrong_count_type_shape_before_values():
    r = G.check("linear_backward", lambda dY, X, W, b: (dY @ W.T, X.T))
    assert "must return 3 values" in r.diagnosis
    r = G.check("linear_backward", lambda dY, X, W, b: [list(dY @ W.T), None, None])
    assert "Python list" in r.diagnosis
    r = G.check(
        "layernorm_backward", lambda dY, X, g, b, eps: (*reference.layernorm_backward(dY, X, g, b, eps)[:1], dY, dY)
    )
    assert "shape" in r.diagnosis and "batch axes" in r.diagnosis
    r = G.check(
        "preln_block_backward",
        lambda dY, X, p, h, e: {"d" + k: v for k, v in reference.preln_block_backward(dY, X, p, h, e).items()},
    )
    assert "not 'dW_q'" in r.diagnosis


def test_none_where_gamma_is_none():
    def fn(dY, X, gamma, beta, eps):
        dX, dg, db = reference.layernorm_backward(dY, X, gamma, beta, eps)
        return dX, (np.zeros(X.shape[-1]) if dg is None else dg), db

    r = G.check("layernorm_backward", fn)
    assert not r.passed and "should be None" in r.diagnosis


def test_first_wrong_intermediate_is_named():
    def fn(dY, X, p, heads, eps):
        out = reference.preln_block_backward(dY, X, p, heads, eps)
        with reference.zoo_injected("gelu_backward_no_product_rule"):
            bad = reference.preln_block_backward(dY, X, p, heads, eps)
        out = {**bad, "Y_mlp": out["Y_mlp"], "G": out["G"]}
        return out

    r = G.check("preln_block_backward", fn)
    assert not r.passed
    assert "gelu'" in r.diagnosis or "product rule" in r.diagnosis  # the zoo names it first

    def fn2(dY, X, p, heads, eps):  # a wrong dU nobody catalogued: the intermediates localise it
        out = reference.preln_block_backward(dY, X, p, heads, eps)
        bad = reference.preln_block_backward(dY * 1.0, X, {**p, "W_1": p["W_1"] * 1.01}, heads, eps)
        return {**bad, "Y_mlp": out["Y_mlp"], "G": out["G"]}

    r = G.check("preln_block_backward", fn2)
    assert "The first wrong intermediate is dU (dY_mlp, dG before it are right)" in r.diagnosis


def test_report_display():
    r = G.check("tokens_backward", _ref("tokens_backward"))
    text = str(r)
    assert text.splitlines()[0] == "tokens_backward: passed (3 hidden cases)"
    assert "rel. error" in text and "dpos" in text
    html = r._repr_html_()
    assert "<table" in html and "dcls" in html


def test_hidden_cases_are_fresh_draws_and_non_square():
    a = cases.make_cases("attention_backward", seed=0)
    b = cases.make_cases("attention_backward", seed=1)
    assert not np.array_equal(a[0].args[1], b[0].args[1])
    for c in a:
        dY, X, W_q, W_k, W_v, W_o, H = c.args
        N, T, D = X.shape
        assert W_q.shape[1] != D and T != D and H > 1
    assert {c.args[1].shape[0] for c in a} >= {1, 2}
    step = cases.make_cases("vit_train_step")
    assert all(c.args[0].shape[2] != c.args[0].shape[3] for c in step)  # rectangular images
    assert all(c.args[5].shape[0] > 1 and c.args[7] > 1 for c in step)  # > 1 block and head


def test_import_vitlib_grade_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, vitlib.grade; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_exercise_and_bad_backend():
    with pytest.raises(ValueError, match="unknown exercise"):
        G.check("nope", lambda: None)
    with pytest.raises(ValueError, match="backend"):
        G.check("sgd_step", lambda *a: None, backend="jax")


def test_step_intermediates_name_the_first_wrong_one():
    from vit_oracles import exercises as oracle

    # torch's intermediates, computed before the check (autograd is refused inside the reader's fn)
    right = {
        c.args[0].tobytes(): oracle.vit_train_step_intermediates(*c.args)[1] for c in cases.make_cases("vit_train_step")
    }

    def step(*a):  # dw_mlp1 of the last block 10% off, and the reader's dnorm2 with it
        flat = mistakes._step_variant(lambda dw, args: {**dw, "blocks[1].w_mlp1": 1.1 * dw["blocks[1].w_mlp1"]})(*a)
        inter = dict(right[a[0].tobytes()])
        inter["blocks[1].norm2"] = inter["blocks[1].norm2"] * 1.1
        return flat, inter

    report = G.check("vit_train_step", step)
    assert not report.passed
    assert "blocks[1].w_mlp1 is wrong (the first wrong weight walking back from the loss)" in report.diagnosis
    assert "The first wrong intermediate is blocks[1].dnorm2 (dlogits, dcls_repr" in report.diagnosis


def test_unshifted_softmax_overflows_and_is_told_to_shift():
    def softmax_ce_backward(logits, y):
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # no max shift
        p[np.arange(len(y)), y] -= 1.0
        return p / len(y)

    with np.errstate(all="ignore"):
        report = G.check("softmax_ce_backward", softmax_ce_backward)
    assert not report.passed and "NaN or inf" in report.diagnosis and "shift by the row max" in report.diagnosis


def test_attention_intermediates_name_the_first_wrong_one():
    """A 6th item, a dict of intermediate gradients, in either head layout, localises the mistake."""

    def attention_backward(dY, X, W_q, W_k, W_v, W_o, heads):
        grads = mistakes.OWN["attention_backward_no_scale_dK"].fn(dY, X, W_q, W_k, W_v, W_o, heads)
        H = heads
        Q, K, V, S, A, O, scale = reference._attention_parts(X, {"W_q": W_q, "W_k": W_k, "W_v": W_v}, H)
        inter = {}
        reference._attention_intermediates(dY, {"W_o": W_o}, (Q, K, V, S, A, O, scale), inter)
        inter["K"] = inter["K"] * np.sqrt(Q.shape[-1])  # the reader's dK, unscaled like their dW_k
        inter["V"] = inter["V"].transpose(0, 2, 1, 3).reshape(X.shape[0], X.shape[1], -1)  # merged too
        return (*grads, inter)

    report = G.check("attention_backward", attention_backward)
    assert not report.passed
    assert "missing the 1/sqrt(D_h)" in report.diagnosis  # the catalogue names it first

    def attention_backward2(dY, X, W_q, W_k, W_v, W_o, heads):
        out = list(reference.attention_backward(dY, X, W_q, W_k, W_v, W_o, heads))
        out[2] = out[2] * 1.01  # a wrong dW_k nobody catalogued
        Q, K, V, S, A, O, scale = reference._attention_parts(X, {"W_q": W_q, "W_k": W_k, "W_v": W_v}, heads)
        inter = {}
        reference._attention_intermediates(dY, {"W_o": W_o}, (Q, K, V, S, A, O, scale), inter)
        inter["K"] = inter["K"] * 1.01
        return (*out, inter)

    report = G.check("attention_backward", attention_backward2)
    assert "The first wrong intermediate is dK (dO, dA, dV, dS before it are right)" in report.diagnosis


def test_wrong_signature_is_told_apart_from_a_crash():
    report = G.check("layernorm_backward", lambda dY, X: (dY, None, None))
    assert not report.passed
    assert (
        "does not take those arguments" in report.diagnosis
        and "layernorm_backward(dY, X, gamma, beta, eps)" in report.diagnosis
    )


def test_flattened_output_is_told_to_reshape():
    def linear_backward(dY, X, W, b):
        dX, dW, db = reference.linear_backward(dY, X, W, b)
        return dX.reshape(-1, dX.shape[-1]), dW, db

    report = G.check("linear_backward", linear_backward)
    assert "right number of entries: reshape it back to (2, 3, 5)" in report.diagnosis


def test_torch_inplace_edit_is_caught():
    def layernorm_backward(dY, X, gamma, beta, eps):
        out = reference.layernorm_backward(dY.numpy(), X.numpy().copy(), _to_np(gamma), _to_np(beta), eps)
        X -= X.mean(dim=-1, keepdim=True)  # the caller's tensor, centred in place
        return tuple(None if o is None else torch.from_numpy(o) for o in out)

    report = G.check("layernorm_backward", layernorm_backward, backend="torch")
    assert not report.passed and "modified its input `X` in place" in report.diagnosis
