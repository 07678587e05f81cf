"""Gradient checking as a library feature (chapter 10).

`check_gradients` compares the hand-written gradient with central differences
    dL/dw_i ~ (L(w + eps e_i) - L(w - eps e_i)) / (2 eps),
coordinate by coordinate (all of them for tiny models, a random sample otherwise).
`directional_check` costs two loss evaluations whatever the model's size: along one
random unit direction u, (L(w + eps u) - L(w - eps u)) / (2 eps) must equal <grad, u>.

Relative error of a tensor:  max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|, tiny),
measured against the tensor's own scale, so coordinates whose gradient is ~0 do not
produce huge ratios from round-off alone.
"""

from dataclasses import dataclass

import numpy as np

from .loss import cross_entropy_forward
from .model import forward, loss_and_grads
from .validate import check_images, check_labels, check_params, check_scalar


def _as_numbers(name, v):
    """float64, or complex128 when complex (|a - b| then measures the imaginary parts too)."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    v = np.asarray(v)
    if v.dtype.kind not in "biufc":
        raise TypeError(f"rel_error: {name} must be numeric, got dtype {v.dtype}")
    return v.astype(np.complex128 if v.dtype.kind == "c" else np.float64)


def _check_eps(eps, dtype):
    if eps is None:
        return default_eps(dtype)
    return check_scalar("eps", eps, minimum=np.finfo(dtype).tiny)


def rel_error(a, b, tiny=1e-300):
    """max|a - b| / max(max|a|, max|b|): 0 for equal tensors, ~1 for unrelated ones."""
    a, b = _as_numbers("a", a), _as_numbers("b", b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(b).max(), tiny)
    return float(np.abs(a - b).max() / scale)


def default_eps(dtype):
    """Near the optimum of truncation (~eps^2) against round-off (~u/eps): u^(1/3)."""
    return 1e-5 if np.dtype(dtype) == np.float64 else 1e-2


@dataclass
class GradCheck:
    """One tensor's check: the analytic and numeric values at the checked coordinates."""

    name: str
    coords: list  # index tuples checked
    analytic: np.ndarray
    numeric: np.ndarray

    @property
    def max_rel_error(self) -> float:
        return rel_error(self.analytic, self.numeric)


def _loss_fn(params, x, y, cfg):
    def loss(p):
        return cross_entropy_forward(forward(p, x, cfg)[0], y)[0]

    return loss


def check_gradients(params, x, y, cfg, eps=None, max_coords=20, full_below=2000, seed=0, names=None, fast=True):
    """-> {name: GradCheck}. Every coordinate when the model has fewer than `full_below`
    parameters, else `max_coords` random coordinates per tensor. Params are not modified.
    fast=False checks the teaching path (model.forward/backward) instead of the fused one."""
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    y = check_labels(y, x.shape[0], cfg.num_classes)
    eps = _check_eps(eps, dtype)
    _, grads = loss_and_grads(params, x, y, cfg, fast=fast)
    loss = _loss_fn(params, x, y, cfg)
    total = sum(p.size for p in params.values())
    rng = np.random.default_rng(seed)
    results = {}
    for name in names or params:
        p = params[name]
        if total < full_below or p.size <= max_coords:
            flat = np.arange(p.size)
        else:
            flat = rng.choice(p.size, size=max_coords, replace=False)
        coords = [np.unravel_index(i, p.shape) for i in flat]
        numeric = np.empty(len(coords))
        shifted = p.copy()  # one copy per tensor; each coordinate is restored after use
        work = {**params, name: shifted}
        for j, idx in enumerate(coords):
            shifted[idx] = p[idx] + eps
            w_plus = float(shifted[idx])  # the step actually stored: in float32, w + eps rounds
            plus = loss(work)
            shifted[idx] = p[idx] - eps
            w_minus = float(shifted[idx])
            minus = loss(work)
            shifted[idx] = p[idx]
            numeric[j] = (plus - minus) / (w_plus - w_minus)
        analytic = np.array([grads[name][idx] for idx in coords], dtype=np.float64)
        results[name] = GradCheck(name, [tuple(int(i) for i in c) for c in coords], analytic, numeric)
    return results


def directional_check(params, x, y, cfg, eps=None, seed=0, fast=True):
    """-> (analytic, numeric, rel_error) of the derivative along one random unit direction."""
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    y = check_labels(y, x.shape[0], cfg.num_classes)
    eps = _check_eps(eps, dtype)
    _, grads = loss_and_grads(params, x, y, cfg, fast=fast)
    rng = np.random.default_rng(seed)
    u = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    norm = np.sqrt(sum((v * v).sum() for v in u.values()))
    u = {k: (v / norm).astype(dtype) for k, v in u.items()}
    loss = _loss_fn(params, x, y, cfg)
    plus = loss({k: p + eps * u[k] for k, p in params.items()})
    minus = loss({k: p - eps * u[k] for k, p in params.items()})
    numeric = (plus - minus) / (2 * eps)
    analytic = float(sum((grads[k].astype(np.float64) * u[k]).sum() for k in params))
    return analytic, numeric, abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-300)


def cmp(name, ours, theirs, tol=1e-10):
    """Karpathy's backprop-ninja check, with shapes compared first (broadcasting once fooled it):
    prints `name | exact | allclose | max diff | rel error` and returns the relative error.
    `theirs` may be a torch tensor."""
    if hasattr(theirs, "detach"):
        theirs = theirs.detach().cpu().numpy()
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
        print(f"{name:24s} | SHAPE MISMATCH: ours {ours.shape} vs reference {theirs.shape}")
        return float("inf")
    exact = bool(np.array_equal(ours, theirs))
    err = rel_error(ours, theirs)
    maxdiff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    print(f"{name:24s} | exact: {exact!s:5} | close: {err < tol!s:5} | max diff: {maxdiff:.2e} | rel error: {err:.2e}")
    return err
