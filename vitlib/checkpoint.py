"""Checkpoints: one .npz file, written atomically, read without ever unpickling.

    vitlib.save_checkpoint(path, params, cfg)            # plus optional training state (keywords)
    params, cfg = vitlib.load_checkpoint(path)
    state = load_training_state(path)                    # dict: params, cfg, opt_state, epoch, ...

Layout of the .npz (every member a plain numeric or unicode array):
    format        "vitlib-checkpoint-1"
    config        ViTConfig.to_dict() as JSON text
    meta          JSON text: epoch, rng_state (numpy bit_generator state), history, recipe,
                  and the optimizer state's scalars (step count, name)
    param/<key>   one array per parameter, e.g. param/blocks.0.W_q
    opt/<sub>/<key>  the optimizer's per-parameter buffers, e.g. opt/m/W_head, opt/buf/pos

Atomic: the file is written under a temporary name in the same directory, flushed and
fsync'ed, then os.replace'd over `path`. A process killed at any moment (even SIGKILL)
leaves either the previous checkpoint or the new one, never half a file.
"""

import io
import json
import os
import stat
import tempfile

import numpy as np

from .config import ViTConfig
from .params import param_shapes

FORMAT = "vitlib-checkpoint-1"


def _kind(mode) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")]  # fmt: skip
    for test, name in kinds:
        if test(mode):
            return name
    return "not a regular file"


def atomic_write(path, data: bytes):
    """Write `data` to `path` so that readers see the old file or the new one, never a mix.

    `path` must be a regular file or a new name: a device (/dev/full, /dev/null), a directory or a
    pipe is refused, never replaced. A symlink is written through: its target gets the new bytes and
    the link stays. An existing file keeps its permission bits; a new one gets 0666 minus the umask."""
    path = os.fspath(path)
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot write {path!r}: it is {_kind(st.st_mode)}, not a regular file")
    directory = os.path.dirname(os.path.abspath(target))
    prefix = f".{os.path.basename(target)}.{os.getpid()}."  # the pid: stale-file cleanup spares live writers
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        if st is not None:
            mode = stat.S_IMODE(st.st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (POSIX); harmless where directories cannot be opened
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _text(s: str) -> np.ndarray:
    return np.array(s)  # a 0-d unicode array: no pickling needed to store or load it


def save_checkpoint(
    path, params, cfg: ViTConfig, *, opt_state=None, epoch=None, rng_state=None, history=None, recipe=None
):
    """Write params and cfg (and, optionally, the training state) to `path` atomically.

    opt_state: an optimizer state dict (vitlib.adamw_init / momentum_init style): its int/float/str
    entries go to the JSON meta, its dicts of arrays to opt/<name>/<key>.
    epoch: epochs completed; rng_state: a numpy bit_generator.state dict; history: a list of
    JSON-ready dicts (one per epoch); recipe: a JSON-ready dict of training settings.
    """
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"cfg must be a vitlib.ViTConfig, got {type(cfg).__name__}")
    shapes = param_shapes(cfg)
    if not isinstance(params, dict) or set(params) != set(shapes):
        raise ValueError("params must be a dict with exactly the keys of vitlib.param_shapes(cfg)")
    arrays = {"format": _text(FORMAT), "config": _text(json.dumps(_jsonable("config", cfg.to_dict())))}
    for k, shape in shapes.items():
        v = params[k]
        if not isinstance(v, np.ndarray) or v.dtype not in (np.float32, np.float64) or v.shape != shape:
            raise ValueError(f"params[{k!r}] must be a float32 or float64 numpy array of shape {shape}")
        arrays["param/" + k] = v
    opt_scalars, opt_dicts = None, []
    if opt_state is not None:
        opt_scalars = {}
        for name, value in opt_state.items():
            if isinstance(value, dict):
                opt_dicts.append(name)
                for k, v in value.items():
                    v = np.asarray(v)
                    if v.dtype.kind not in "fiub":  # object arrays would need pickle
                        raise ValueError(f"opt_state[{name!r}][{k!r}] must be a numeric array, got dtype {v.dtype}")
                    arrays[f"opt/{name}/{k}"] = v
            elif isinstance(value, (bool, int, float, str, np.integer, np.floating)) or value is None:
                opt_scalars[name] = value.item() if isinstance(value, np.generic) else value
            else:
                raise TypeError(f"opt_state[{name!r}] must be a number, a string or a dict of arrays")
    if epoch is not None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0 or None, got {epoch!r}")
        epoch = int(epoch)
    meta = {
        "epoch": epoch,
        "rng_state": _jsonable("rng_state", rng_state),
        "history": _jsonable("history", history),
        "recipe": _jsonable("recipe", recipe),
        "opt_scalars": opt_scalars,
        "opt_dicts": opt_dicts,
    }
    arrays["meta"] = _text(json.dumps(meta, allow_nan=True))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def _jsonable(name, value):
    """value with numpy scalars and arrays turned into Python numbers and lists; TypeError naming the
    entry for anything JSON cannot hold (the file is never pickled)."""

    def convert(v, where):
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
            return v.tolist()
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise TypeError(f"{where} must have string keys, got {sorted(map(repr, v))[:5]}")
            return {k: convert(x, f"{where}[{k!r}]") for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [convert(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"{where} must be JSON data (numbers, strings, lists, dicts), got {type(v).__name__}")

    return convert(value, name)


def _read_all(path) -> dict:
    """Every member of the .npz as a numpy array; anything unreadable -> ValueError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise ValueError(f"{path!r} cannot be read: {exc}") from None
    if not head.startswith(b"PK") and not head.startswith(b"\x93NUMPY"):
        raise ValueError(
            f"{path!r} is not a vitlib checkpoint: not an .npz (zip) file, it starts with {head!r}"
            if head
            else f"{path!r} is not a vitlib checkpoint: the file is empty"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("it is a single .npy array, not an .npz archive")
            return {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise ValueError(
                f"{path!r} is not a vitlib checkpoint: it holds pickled (object) data, which is never loaded"
            ) from None
        raise ValueError(f"{path!r} is not a vitlib checkpoint (not a readable .npz file): {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, EOFError, OSError, ... from a damaged file
        raise ValueError(
            f"{path!r} is not a vitlib checkpoint (truncated or corrupt .npz file): {type(exc).__name__}: {exc}"
        ) from None


def _json_member(path, arrays, name):
    if name not in arrays:
        raise ValueError(f"{path!r} is not a complete vitlib checkpoint: missing {name!r}")
    a = arrays[name]
    if a.shape != () or a.dtype.kind != "U":
        raise ValueError(f"{path!r}: {name!r} must be JSON text, got an array of dtype {a.dtype}, shape {a.shape}")
    try:
        return json.loads(str(a))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path!r}: {name!r} is not valid JSON: {exc}") from None


def load_training_state(path) -> dict:
    """-> dict(params, cfg, opt_state, epoch, rng_state, history, recipe); ValueError on anything foreign."""
    arrays = _read_all(path)
    fmt = arrays.get("format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        found = "no 'format' entry" if fmt is None else f"format {fmt!r}"
        raise ValueError(f"{path!r} is not a vitlib checkpoint: expected format {FORMAT!r}, found {found}")
    cfg_dict = _json_member(path, arrays, "config")
    try:
        cfg = ViTConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path!r}: bad model config in checkpoint: {exc}") from None
    meta = _json_member(path, arrays, "meta")
    if not isinstance(meta, dict):
        raise ValueError(f"{path!r}: 'meta' must be a JSON object, got {type(meta).__name__}")
    shapes = param_shapes(cfg)
    stored = {k[len("param/") :] for k in arrays if k.startswith("param/")}
    missing, extra = sorted(set(shapes) - stored), sorted(stored - set(shapes))
    if missing or extra:
        raise ValueError(f"{path!r}: parameters do not match the config: missing {missing}, unexpected {extra}")
    params, dtypes = {}, set()
    for k, shape in shapes.items():
        v = arrays["param/" + k]
        if v.dtype not in (np.float32, np.float64):
            raise ValueError(f"{path!r}: parameter {k!r} must be float32 or float64, got {v.dtype}")
        if v.shape != shape:
            raise ValueError(f"{path!r}: parameter {k!r} must have shape {shape}, got {v.shape}")
        params[k] = v
        dtypes.add(v.dtype)
    if len(dtypes) > 1:
        raise ValueError(f"{path!r}: parameters mix dtypes {sorted(map(str, dtypes))}")
    opt_state = None
    if meta.get("opt_scalars") is not None:
        opt_state = dict(meta["opt_scalars"])
        for name in meta.get("opt_dicts") or []:
            prefix = f"opt/{name}/"
            opt_state[name] = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    return {
        "params": params,
        "cfg": cfg,
        "opt_state": opt_state,
        "epoch": meta.get("epoch"),
        "rng_state": meta.get("rng_state"),
        "history": meta.get("history"),
        "recipe": meta.get("recipe"),
    }


def load_checkpoint(path):
    """-> (params, cfg). Never unpickles; a truncated or foreign file raises ValueError."""
    state = load_training_state(path)
    return state["params"], state["cfg"]
