"""Input checks: every bad input is named, with what was expected and what came."""

import numbers

import numpy as np

from .config import ViTConfig
from .params import param_shapes

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def as_array(name, value):
    """numpy array or torch tensor (or nested list) -> numpy array, never a view we could write to."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array, got {type(value).__name__}: {exc}") from None
    return arr


def check_cfg(cfg):
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"cfg must be a vitlib.ViTConfig, got {type(cfg).__name__}")


def check_params(params, cfg) -> np.dtype:
    """All of cfg's keys, none more, each of its shape, one float dtype for all -> that dtype."""
    check_cfg(cfg)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    shapes = param_shapes(cfg)
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise ValueError(f"params do not match the {cfg.style!r} config: missing {missing}, unexpected {extra}")
    dtypes = set()
    for k, shape in shapes.items():
        v = params[k]
        if not isinstance(v, np.ndarray):
            raise TypeError(f"params[{k!r}] must be a numpy array, got {type(v).__name__}")
        if v.dtype not in FLOATS:
            raise TypeError(f"params[{k!r}] must be float32 or float64, got dtype {v.dtype}")
        if v.shape != shape:
            raise ValueError(f"params[{k!r}] must have shape {shape}, got {v.shape}")
        dtypes.add(v.dtype)
    if len(dtypes) > 1:
        raise TypeError(f"params mix dtypes {sorted(str(d) for d in dtypes)}; use one of float32 or float64")
    return dtypes.pop()


def check_images(x, cfg, dtype) -> np.ndarray:
    """x (N, C, img_h, img_w), real and finite -> a new array in `dtype`."""
    x = as_array("x", x)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
    expected = (cfg.channels, *cfg.image_size)
    if x.ndim != 4 or x.shape[1:] != expected:
        raise ValueError(f"x must have shape (N, {', '.join(map(str, expected))}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one image (N >= 1), got N = 0")
    x = x.astype(dtype)  # always a copy: the caller's array is never touched
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    return x


def check_labels(y, n, num_classes) -> np.ndarray:
    """y (n,) integers in [0, num_classes) -> int64 array."""
    y = as_array("y", y)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match x's batch of {n}, got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"y must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def check_scalar(name, value, minimum=0.0):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value}")
    return float(value)
