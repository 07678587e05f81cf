"""Hand-written optimizers, functional: (params, grads, state) in, (params, state) out.

Nothing is updated in place: the caller's params, grads and state stay as they were, so
a step can be refused (a non-finite loss, say) by simply keeping the old dicts.
Each update follows torch.optim's formula to the letter, so 10 steps agree to 1e-10,
and each hyper-parameter is checked as torch.optim checks it (0 <= beta < 1, eps >= 0, ...).
"""

import math

import numpy as np

from .validate import FLOATS, check_scalar


def _check(params, grads):
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise TypeError(f"params and grads must be dicts, got {type(params).__name__} and {type(grads).__name__}")
    if params.keys() != grads.keys():
        missing, extra = sorted(params.keys() - grads.keys()), sorted(grads.keys() - params.keys())
        raise ValueError(f"grads must have params' keys: missing {missing}, unexpected {extra}")
    for k, p in params.items():
        if type(p) is not np.ndarray or p.dtype not in FLOATS:
            what = f"dtype {p.dtype}" if isinstance(p, np.ndarray) else type(p).__name__
            raise TypeError(f"params[{k!r}] must be a float32 or float64 numpy array, got {what}")
        g = grads[k]
        if type(g) is not np.ndarray:  # a list, a masked array, a torch tensor: the update would change type
            raise TypeError(f"grads[{k!r}] must be a numpy array like params[{k!r}], got {type(g).__name__}")
        if g.dtype != p.dtype:  # torch: a gradient has its parameter's dtype; float64 or complex would leak in
            raise TypeError(f"grads[{k!r}] must have params[{k!r}]'s dtype {p.dtype}, got {g.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"grads[{k!r}] must have shape {p.shape}, got {g.shape}")


def _check_state(state, params, fn, init, buffers):
    """state must come from `init` (the same optimizer) for these params."""
    if not isinstance(state, dict):
        raise TypeError(f"{fn} needs the state of vitlib.{init}(params), got {type(state).__name__}")
    missing = [k for k in ("step", *buffers) if k not in state]
    if missing:
        raise ValueError(
            f"{fn} needs the state of vitlib.{init}(params) (keys {['step', *buffers]}), "
            f"got a state with keys {sorted(state)}: another optimizer's?"
        )
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"state['step'] must be an integer >= 0, got {step!r}")
    for name in buffers:
        buf = state[name]
        if not isinstance(buf, dict):
            raise TypeError(f"state[{name!r}] must be a dict of arrays, got {type(buf).__name__}")
        for k, v in buf.items():
            if k not in params:
                raise ValueError(f"state[{name!r}] holds {k!r}, which is not a parameter")
            if not isinstance(v, np.ndarray) or v.shape != params[k].shape:
                raise ValueError(f"state[{name!r}][{k!r}] must be an array of shape {params[k].shape}")


def sgd_step(params, grads, lr):
    """w <- w - lr * dw for every parameter; returns a new dict."""
    _check(params, grads)
    lr = check_scalar("lr", lr)
    return {k: p - lr * grads[k] for k, p in params.items()}


def momentum_init(params):
    """SGD-with-momentum state: no buffers yet (torch fills them with the first gradient)."""
    return {"step": 0, "buf": {}}


def check_momentum_args(lr, momentum, weight_decay, dampening, nesterov):
    """torch.optim.SGD's checks -> floats."""
    lr, momentum = check_scalar("lr", lr), check_scalar("momentum", momentum)
    weight_decay, dampening = check_scalar("weight_decay", weight_decay), check_scalar("dampening", dampening)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"nesterov must be True or False, got {type(nesterov).__name__} {nesterov!r}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"nesterov needs momentum > 0 and dampening == 0 (as torch.optim.SGD), "
            f"got momentum={momentum}, dampening={dampening}"
        )
    return lr, momentum, weight_decay, dampening


def momentum_step(params, grads, state, lr, momentum=0.9, weight_decay=0.0, dampening=0.0, nesterov=False):
    """torch.optim.SGD with momentum:
    g = dw + wd*w;  buf = g (first step) or momentum*buf + (1-dampening)*g;
    w <- w - lr * (g + momentum*buf if nesterov else buf)."""
    _check(params, grads)
    _check_state(state, params, "momentum_step", "momentum_init", ("buf",))
    lr, momentum, weight_decay, dampening = check_momentum_args(lr, momentum, weight_decay, dampening, nesterov)
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


def check_adamw_args(lr, betas, eps, weight_decay):
    """torch.optim.AdamW's checks (lr >= 0, eps >= 0, 0 <= beta < 1, weight_decay >= 0) -> floats."""
    lr, eps, weight_decay = check_scalar("lr", lr), check_scalar("eps", eps), check_scalar("weight_decay", weight_decay)
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = (check_scalar(f"betas[{i}]", b, below=1.0) for i, b in enumerate(betas))
    return lr, (b1, b2), eps, weight_decay


def adamw_step(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, no_decay=()):
    """torch.optim.AdamW (decoupled weight decay):
    w <- w (1 - lr*wd);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    w <- w - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    Keys in `no_decay` (biases, LayerNorm, cls, pos, by the usual recipe) get no weight decay."""
    _check(params, grads)
    _check_state(state, params, "adamw_step", "adamw_init", ("m", "v"))
    missing = [k for k in params if k not in state["m"] or k not in state["v"]]
    if missing:
        raise ValueError(f"adamw_step: the state has no moments for {missing}: make it with adamw_init(params)")
    lr, (b1, b2), eps, weight_decay = check_adamw_args(lr, betas, eps, weight_decay)
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
