"""Input checks: every bad input is named, with what was expected and what came."""

import math
import numbers

import numpy as np

from .config import ViTConfig
from .params import param_shapes

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _from_torch(name, t):
    """A torch tensor -> numpy, without importing torch. bfloat16 has no numpy dtype: it becomes float32
    (exact); a meta tensor holds no numbers and is refused."""
    if getattr(t, "is_meta", False) or str(getattr(t, "device", "")) == "meta":
        raise TypeError(f"{name} is a torch tensor on the 'meta' device (a shape without data); pass real values")
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    if t.is_complex():
        t = t.resolve_conj()
    return t.numpy()


def as_array(name, value):
    """numpy array or torch tensor (or nested list) -> numpy array, never a view we could write to.
    numpy subclasses are refused: a masked array's mask would be dropped, np.matrix breaks reductions."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = _from_torch(name, value)
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain numpy array, got a masked array: fill it first (x.filled(...))")
    if isinstance(value, np.matrix):
        raise TypeError(f"{name} must be a plain numpy array, got np.matrix: pass np.asarray({name})")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array, got {type(value).__name__}: {exc}") from None
    return arr


def _where(bad) -> str:
    """'at index (i, j, ...)' of the first True of a boolean array, and how many there are."""
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    n = int(bad.sum())
    return f"at index {idx}" + (f" (and {n - 1} more)" if n > 1 else "")


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
        if type(v) is not np.ndarray:  # subclasses (np.matrix, masked arrays) break the maths inside
            what = "a masked array" if isinstance(v, np.ma.MaskedArray) else type(v).__name__
            raise TypeError(f"params[{k!r}] must be a plain numpy array (np.ndarray), got {what}")
        if v.dtype not in FLOATS:
            if v.dtype.kind == "f" and v.dtype.byteorder not in "=|" and v.dtype.newbyteorder() in FLOATS:
                raise TypeError(
                    f"params[{k!r}] must be native float32 or float64, got big-endian {v.dtype.str}: "
                    f"convert with .astype({v.dtype.newbyteorder().name!r})"
                )
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
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(x).all():
            raise ValueError(f"x contains NaN or inf {_where(~np.isfinite(x))}")
        cast = x.astype(dtype)  # always a copy: the caller's array is never touched
    dtype = np.dtype(dtype)
    if not np.isfinite(cast).all():
        bad = ~np.isfinite(cast)
        value = x[np.unravel_index(int(np.argmax(bad)), bad.shape)]
        raise ValueError(
            f"x overflows {dtype.name} (the params' dtype) {_where(bad)}: {value:.3g} > {np.finfo(dtype).max:.3g}"
        )
    # LayerNorm squares the patch embeddings: |x| beyond ~sqrt(max)/1e4 overflows there silently
    limit = math.sqrt(np.finfo(dtype).max) / 1e4
    big = np.abs(cast) > limit
    if big.any():
        raise ValueError(
            f"x holds {np.abs(cast).max():.3g} {_where(big)}: values above {limit:.1e} overflow {dtype.name} "
            f"in LayerNorm's squares of the patch embedding; rescale x"
            + (" or use float64 params" if dtype == np.float32 else "")
        )
    return cast


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


def check_scalar(name, value, minimum=0.0, below=None, maximum=None):
    """A real, finite number >= minimum (and < below, <= maximum when given) -> float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        finite = False
    if below is not None:
        rule = f"a finite number in [{minimum}, {below})"
    elif maximum is not None:
        rule = f"a finite number in [{minimum}, {maximum:g}]"
    else:
        rule = f"a finite number >= {minimum}"
    too_big = (below is not None and value >= below) or (maximum is not None and value > maximum)
    if not finite or value < minimum or too_big:
        raise ValueError(f"{name} must be {rule}, got {value}")
    return float(value)


def check_int(name, value, minimum=None, maximum=None):
    """An integer (Python or numpy, not bool) in [minimum, maximum] -> int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "" if minimum is None else f">= {minimum}"
        hi = "" if maximum is None else f"<= {maximum}"
        raise ValueError(f"{name} must be an integer {' and '.join(filter(None, (lo, hi)))}, got {value}")
    return value
