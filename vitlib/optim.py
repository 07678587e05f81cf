"""Hand-written optimizers, functional: (params, grads, state) in, (params, state) out.

Nothing is updated in place: the caller's params, grads and state stay as they were, so
a step can be refused (a non-finite loss, say) by simply keeping the old dicts.
Each update follows torch.optim's formula to the letter, so 10 steps agree to 1e-10.
"""

import math

import numpy as np

from .validate import check_scalar


def _check(params, grads):
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise TypeError(f"params and grads must be dicts, got {type(params).__name__} and {type(grads).__name__}")
    if params.keys() != grads.keys():
        missing, extra = sorted(params.keys() - grads.keys()), sorted(grads.keys() - params.keys())
        raise ValueError(f"grads must have params' keys: missing {missing}, unexpected {extra}")
    for k, p in params.items():
        if np.shape(grads[k]) != np.shape(p):
            raise ValueError(f"grads[{k!r}] must have shape {np.shape(p)}, got {np.shape(grads[k])}")


def sgd_step(params, grads, lr):
    """w <- w - lr * dw for every parameter; returns a new dict."""
    _check(params, grads)
    lr = check_scalar("lr", lr)
    return {k: p - lr * grads[k] for k, p in params.items()}


def momentum_init(params):
    """SGD-with-momentum state: no buffers yet (torch fills them with the first gradient)."""
    return {"step": 0, "buf": {}}


def momentum_step(params, grads, state, lr, momentum=0.9, weight_decay=0.0, dampening=0.0, nesterov=False):
    """torch.optim.SGD with momentum:
    g = dw + wd*w;  buf = g (first step) or momentum*buf + (1-dampening)*g;
    w <- w - lr * (g + momentum*buf if nesterov else buf)."""
    _check(params, grads)
    lr, momentum = check_scalar("lr", lr), check_scalar("momentum", momentum)
    weight_decay, dampening = check_scalar("weight_decay", weight_decay), check_scalar("dampening", dampening)
    new_params, new_buf = {}, {}
    for k, p in params.items():
        g = grads[k] + weight_decay * p if weight_decay else grads[k]
        buf = g.copy() if k not in state["buf"] else momentum * state["buf"][k] + (1.0 - dampening) * g
        new_buf[k] = buf
        new_params[k] = p - lr * (g + momentum * buf if nesterov else buf)
    return new_params, {"step": state["step"] + 1, "buf": new_buf}


def adamw_init(params):
    """AdamW state: step count and zero first/second moments."""
    return {
        "step": 0,
        "m": {k: np.zeros_like(p) for k, p in params.items()},
        "v": {k: np.zeros_like(p) for k, p in params.items()},
    }


def adamw_step(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, no_decay=()):
    """torch.optim.AdamW (decoupled weight decay):
    w <- w (1 - lr*wd);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    w <- w - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    Keys in `no_decay` (biases, LayerNorm, cls, pos, by the usual recipe) get no weight decay."""
    _check(params, grads)
    lr, eps, weight_decay = check_scalar("lr", lr), check_scalar("eps", eps), check_scalar("weight_decay", weight_decay)
    b1, b2 = (check_scalar("beta", b) for b in betas)
    t = state["step"] + 1
    # Python floats, not np.float64: a numpy scalar would upcast float32 params to float64
    bc1, bc2_sqrt = 1.0 - b1**t, math.sqrt(1.0 - b2**t)
    new_params, m_new, v_new = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        wd = 0.0 if k in no_decay else weight_decay
        m = b1 * state["m"][k] + (1.0 - b1) * g
        v = b2 * state["v"][k] + (1.0 - b2) * g * g
        p = p * (1.0 - lr * wd)
        new_params[k] = p - (lr / bc1) * m / (np.sqrt(v) / bc2_sqrt + eps)
        m_new[k], v_new[k] = m, v
    return new_params, {"step": t, "m": m_new, "v": v_new}
