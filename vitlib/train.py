"""Training on real data (chapter 11): one step function, one loop, checkpoints every epoch.

    result = vitlib.train.train(Recipe(epochs=5), seed=0, out_dir="runs/a")   # the CLI's code path
    loss, params, opt_state, grads = train_step(params, opt_state, x, y, cfg, lr=0.1, optimizer="sgd")

`train_step` is the only place where a gradient meets an optimizer: the training loop, the
command line (`python -m vitlib train`) and the Stepper widget all call it.

Reproducibility: the model is initialised from `seed`; epoch e shuffles and augments with
its own generator np.random.default_rng([seed, e]), so a run resumed from the checkpoint of
epoch e draws exactly the batches an uninterrupted run would, and ends with identical weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from .checkpoint import atomic_write, load_training_state, save_checkpoint
from .config import ViTConfig
from .data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_digits_split,
    load_fashion_mnist,
    random_flip,
    random_shift,
)
from .fast import MIN_PARALLEL_ROWS, fast_logits, worker_processes
from .model import attention_maps, forward, loss_and_grads
from .optim import adamw_init, adamw_step, momentum_init, momentum_step, sgd_step
from .params import init_params
from .validate import check_images, check_int, check_params, check_scalar

OPTIMIZERS = ("sgd", "momentum", "adamw")


# Per data set: the image size and training-set size, and the recipe's defaults (the fields a Recipe leaves at None).
# Fashion-MNIST's recipe is issue 11's, its choices measured in benchmarks/README.md ("Fashion-MNIST recipe"): 7x7
# patches (16 tokens + cls) and 6 blocks for 14 epochs of batches of 64, flips, no shifts. For the same compute the
# first recipe, the speed benchmark's model (c) (4x4 patches, 4 blocks, 7 epochs), reached 89.39% on seed 0, this
# one 90.00% (one core).
DATASETS = {
    "digits": {"image_size": 8, "n_train": 1437},
    "fashion-mnist": {"image_size": 28, "n_train": 60000},
}
DEFAULTS = {
    "digits": dict(style="lucidrains", dim=64, depth=2, heads=4, dim_head=16, mlp_dim=128, patch_size=4, pool="cls",
                   epochs=30, batch_size=32, lr=3e-3, warmup_epochs=1.0, weight_decay=0.1, pos_init_std=1.0, shift=1,
                   shift_prob=0.5, flip_prob=0.0, standardize=False, label_smoothing=0.0, tta_flip=False),
    "fashion-mnist": dict(style="lucidrains", dim=64, depth=6, heads=4, dim_head=16, mlp_dim=128, patch_size=7,
                          pool="cls", epochs=14, batch_size=64, lr=2e-3, warmup_epochs=0.5, weight_decay=0.05,
                          pos_init_std=0.02, shift=0, shift_prob=1.0, flip_prob=0.5, standardize=True,
                          label_smoothing=0.1, tta_flip=True),
}  # fmt: skip
# Fields added after checkpoints were first written, with the value that reproduces the earlier recipe: a stored
# recipe without them resumes as it was trained (Recipe.from_dict).
ADDED_FIELDS = {
    "style": "lucidrains",
    "pool": "cls",
    "flip_prob": 0.0,
    "standardize": False,
    "test_size": None,
    "label_smoothing": 0.0,
    "tta_flip": False,
}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run besides the seed. A field left at None takes its data set's
    default (DEFAULTS): Recipe() is the CLI's digits recipe, Recipe(dataset="fashion-mnist") its Fashion-MNIST one."""

    dataset: str = "digits"
    style: str | None = None  # the architecture: a row of vitlib.arch.ARCHS
    # model (style lucidrains: 8x8 digits in 4x4 patches -> 4 patches + cls = 5 tokens; 28x28 -> 49 + cls)
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    dim_head: int | None = None
    mlp_dim: int | None = None
    patch_size: int | None = None
    pool: str | None = None  # "cls" (the cls token's output) or "mean" (of every token's)
    # optimisation: AdamW, linear warm-up then cosine decay to 0, no decay on biases/LayerNorm/cls/pos
    optimizer: str = "adamw"
    lr: float | None = None
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    # the loss: cross-entropy against (1 - label_smoothing) onehot(y) + label_smoothing / 10 (vitlib.loss)
    label_smoothing: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    # init: cls and pos ~ N(0, pos_init_std^2); lucidrains' torch.randn is 1.0 (vitlib.init_params: 0.02)
    pos_init_std: float | None = None
    # augmentation: random shifts by up to `shift` pixels, of a fraction `shift_prob` of the images (the border
    # filled with the background), then left-right flips of a fraction `flip_prob`
    shift: int | None = None
    shift_prob: float | None = None
    flip_prob: float | None = None
    # the model's input: pixels / max (16 for digits, 255 for Fashion-MNIST), then, if standardize, minus the
    # training set's mean and divided by its standard deviation (model_input)
    standardize: bool | None = None
    # the prediction (test accuracy, evaluate): the argmax of the logits of the image plus those of its mirror image
    # (predict(..., tta_flip=True)); training is the same either way
    tta_flip: bool | None = None
    train_size: int | None = None  # use only the first train_size training images (tests, quick demos)
    test_size: int | None = None  # evaluate on the first test_size test images only (the book's short runs)

    def __post_init__(self):
        """Every field checked here, once: the CLI, train() and resume all build a Recipe. Numpy numbers
        become Python ones (the recipe is stored as JSON)."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {self.dataset!r}")
        for name, value in DEFAULTS[self.dataset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        hyper = check_hyper(self.optimizer, self.lr, self.weight_decay, self.momentum)
        for name, value in zip(("lr", "weight_decay", "momentum"), hyper[1:]):
            object.__setattr__(self, name, value)
        size = DATASETS[self.dataset]["image_size"]
        ints = {"dim": (1, None), "depth": (1, None), "heads": (1, None), "dim_head": (1, None),
                "mlp_dim": (1, None), "patch_size": (1, size), "epochs": (1, None), "batch_size": (1, None),
                "shift": (0, size - 1)}  # fmt: skip
        for name, (lo, hi) in ints.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo, hi))
        if size % self.patch_size:
            divisors = [d for d in range(1, size + 1) if size % d == 0]
            raise ValueError(
                f"patch_size must divide the {size}x{size} images of {self.dataset}: one of {divisors}, "
                f"got {self.patch_size}"
            )
        for name in ("standardize", "tta_flip"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}")
            object.__setattr__(self, name, bool(value))
        if self.standardize and self.dataset != "fashion-mnist":
            raise ValueError(
                f"standardize uses Fashion-MNIST's mean and std: it needs dataset 'fashion-mnist', got {self.dataset!r}"
            )
        n_train = DATASETS[self.dataset]["n_train"]
        if self.train_size is not None:
            object.__setattr__(self, "train_size", check_int("train_size", self.train_size, 1, n_train))
        if self.test_size is not None:
            object.__setattr__(self, "test_size", check_int("test_size", self.test_size, 1))
        object.__setattr__(self, "warmup_epochs", check_scalar("warmup_epochs", self.warmup_epochs))
        object.__setattr__(self, "pos_init_std", check_scalar("pos_init_std", self.pos_init_std))
        for name in ("shift_prob", "flip_prob"):
            object.__setattr__(self, name, check_scalar(name, getattr(self, name), maximum=1.0))
        object.__setattr__(self, "label_smoothing", check_scalar("label_smoothing", self.label_smoothing, below=1.0))
        self.model_config()  # fail early on an unknown style, a pool it lacks, impossible model sizes

    def model_config(self) -> ViTConfig:
        return ViTConfig(
            image_size=DATASETS[self.dataset]["image_size"],
            patch_size=self.patch_size,
            num_classes=10,
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            pool=self.pool,
            channels=1,
            dim_head=self.dim_head,
            style=self.style,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """The inverse of to_dict: every field must be there (a stored recipe with a field missing would
        otherwise take today's default silently), none more; only ADDED_FIELDS, absent from recipes stored
        before they existed, take the value that reproduces those runs."""
        if not isinstance(d, dict):
            raise TypeError(f"a recipe must be a dict, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        d = {**{k: v for k, v in ADDED_FIELDS.items() if k not in d}, **d}
        unknown, missing = sorted(set(d) - set(names)), [n for n in names if n not in d]
        if unknown or missing:
            raise ValueError(f"recipe fields do not match: missing {missing}, unknown {unknown}")
        return cls(**d)


N_TRAIN = DATASETS["digits"]["n_train"]  # training images of the digits split (vitlib.data)
LR_MAX = 1e4  # the Stepper's chapter demonstrates a blow-up at 1e4; beyond, no recipe makes sense


def check_hyper(optimizer, lr, weight_decay=0.0, momentum=0.9):
    """The training hyper-parameters, checked in one place for the Recipe (CLI, train, resume) and the
    Stepper -> (optimizer, lr, weight_decay, momentum) as Python values. Raises TypeError/ValueError
    naming the parameter, the rule and the value given."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    lr = check_scalar("lr", lr, maximum=LR_MAX)
    if lr == 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    weight_decay = check_scalar("weight_decay", weight_decay)
    momentum = check_scalar("momentum", momentum, below=1.0)
    return optimizer, lr, weight_decay, momentum


# ---------------------------------------------------------------- the step


def blas_threads(n=1):
    """A context that limits numpy's BLAS to n threads. This model's matrices are tiny (64 x 17 x 64):
    a second BLAS thread buys nothing, and on a busy machine its spin-waiting makes a step 10x slower."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def no_decay_keys(params) -> tuple[str, ...]:
    """Parameters that get no weight decay, by the usual recipe: biases, LayerNorm, cls, pos."""
    return tuple(k for k in params if not k.split(".")[-1].startswith("W_"))


def init_optimizer(optimizer: str, params) -> dict:
    """A fresh optimizer state for "sgd" (only a step count), "momentum" or "adamw"."""
    if optimizer == "sgd":
        return {"step": 0}
    if optimizer == "momentum":
        return momentum_init(params)
    if optimizer == "adamw":
        return adamw_init(params)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def train_step(params, opt_state, x, y, cfg, lr, optimizer="sgd", weight_decay=0.0, momentum=0.9, label_smoothing=0.0):
    """One optimizer step on the mean cross-entropy of the batch (x, y), against labels smoothed by label_smoothing.

    -> (loss, new_params, new_opt_state, grads). The loss is that of `params`, before the update.
    Nothing is modified in place, so a caller may refuse the step by keeping its old params and state.
    """
    loss, grads = loss_and_grads(params, x, y, cfg, smoothing=label_smoothing)
    if optimizer == "sgd":
        if weight_decay:
            grads_wd = {k: g + weight_decay * params[k] for k, g in grads.items()}
            new = sgd_step(params, grads_wd, lr)
        else:
            new = sgd_step(params, grads, lr)
        state = {"step": opt_state["step"] + 1}
    elif optimizer == "momentum":
        new, state = momentum_step(params, grads, opt_state, lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adamw":
        new, state = adamw_step(params, grads, opt_state, lr, weight_decay=weight_decay, no_decay=no_decay_keys(params))
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    return loss, new, state, grads


def lr_at(step, total_steps, base_lr, warmup_steps):
    """Linear warm-up from base_lr/warmup_steps to base_lr, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- looking inside


def predict(params, x, cfg, batch_size=512, fast=True, tta_flip=False) -> np.ndarray:
    """Class indices (N,) by the argmax of the logits: the fast path's forward (fast=True, model.logits) or the
    teaching path's in batches of batch_size. tta_flip=True (test-time augmentation): the argmax of the logits of
    each image plus those of its mirror image x[..., ::-1] (left-right, the flip of training), so an image and its
    mirror image get the same class."""
    dtype = check_params(params, cfg)
    x = check_images(x, cfg, dtype)
    if not isinstance(tta_flip, (bool, np.bool_)):
        raise TypeError(f"tta_flip must be True or False, got {tta_flip!r}")

    def z_of(images):  # params and images checked above: the fast forward itself, not model.logits's checks again
        if fast:
            return fast_logits(params, images, cfg)
        return np.concatenate(
            [forward(params, images[i : i + batch_size], cfg)[0] for i in range(0, len(images), batch_size)]
        )

    z = z_of(x)
    if tta_flip:
        z = z + z_of(np.ascontiguousarray(x[..., ::-1]))
    return z.argmax(-1)


def confusion_matrix(y_true, y_pred, num_classes) -> np.ndarray:
    """C[i, j] = how many images of class i were predicted as class j."""
    C = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(C, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return C


def layer_grad_norms(grads, cfg) -> dict[str, float]:
    """The gradient's Euclidean norm per layer: "embed" (patch projection, cls, pos), "block 0" ...,
    "head" (final LayerNorms and classifier)."""
    groups = {"embed": 0.0, **{f"block {b}": 0.0 for b in range(cfg.depth)}, "head": 0.0}
    for k, g in grads.items():
        if k.startswith("blocks."):
            name = "block " + k.split(".")[1]
        elif k in ("W_patch", "b_patch", "cls", "pos") or k.startswith("ln_patch"):
            name = "embed"
        else:
            name = "head"
        groups[name] += float(np.sum(np.square(g, dtype=np.float64)))
    return {k: math.sqrt(v) for k, v in groups.items()}


def cls_attention_map(params, x, cfg, block=-1) -> np.ndarray:
    """How much the cls token attends to each patch in `block`, averaged over heads,
    on the patch grid: (N, img_h // ph, img_w // pw). Each map sums to 1 minus the cls token's
    attention to itself."""
    if cfg.num_cls == 0:
        raise ValueError("this model has no cls token (vit-pytorch with mean pooling)")
    A = attention_maps(params, x, cfg)[block]  # (N, H, T, T)
    cls_row = A[:, :, 0, cfg.num_cls :].mean(axis=1)  # (N, Np)
    (ih, iw), (ph, pw) = cfg.image_size, cfg.patch_size
    return cls_row.reshape(A.shape[0], ih // ph, iw // pw)


# ---------------------------------------------------------------- the data


PIXEL_MAX = {"digits": 16.0, "fashion-mnist": 255.0}
TRAIN_ACC_IMAGES = 2000  # the epoch's train accuracy is measured on at most this many training images


def model_input(recipe: Recipe, pixels) -> np.ndarray:
    """Raw pixels (digits: 0..16, Fashion-MNIST: 0..255, any shape) -> the model's input, float32: pixels / max,
    then, if recipe.standardize, (x - 0.2860) / 0.3530, the Fashion-MNIST training set's mean and std. This is what
    vitlib.logits takes for a checkpoint trained with `recipe` (its recipe is stored in the checkpoint)."""
    x = np.asarray(pixels, dtype=np.float32) / np.float32(PIXEL_MAX[recipe.dataset])
    if recipe.standardize:
        x = (x - np.float32(FASHION_MNIST_MEAN)) / np.float32(FASHION_MNIST_STD)
    return x


def load_data(recipe: Recipe):
    """-> (x_train, y_train, x_test, y_test) of recipe.dataset as the model's input (model_input), cut to
    recipe.train_size and recipe.test_size images if set."""
    if recipe.dataset == "digits":
        x_train, y_train, x_test, y_test = load_digits_split()  # already pixels / 16
    else:
        x_train, y_train, x_test, y_test = load_fashion_mnist()
        x_train, x_test = model_input(recipe, x_train), model_input(recipe, x_test)
    if recipe.train_size is not None:
        x_train, y_train = x_train[: recipe.train_size], y_train[: recipe.train_size]
    if recipe.test_size is not None:
        x_test, y_test = x_test[: recipe.test_size], y_test[: recipe.test_size]
    return x_train, y_train, x_test, y_test


def epoch_line(record, epochs, n_test) -> str:
    """The one line that ends every epoch: 'epoch 3/7: train loss 0.4123, test accuracy 0.8890 (10000 images),
    108.2 s'."""
    return (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, test accuracy "
        f"{record['test_acc']:.4f} ({n_test} images), {record['time']:.1f} s"
    )


# ---------------------------------------------------------------- the loop


def init_model(recipe: Recipe, seed=0) -> dict:
    """vitlib.init_params in float32, then cls and pos redrawn ~ N(0, recipe.pos_init_std^2).
    With 2x2 patches most tokens of a digit are blank, identical but for pos: a position signal of
    std 0.02 takes AdamW hundreds of steps to grow, std 1 (lucidrains' torch.randn) is there at once."""
    cfg = recipe.model_config()
    params = init_params(cfg, seed=seed, dtype=np.float32)
    rng = np.random.default_rng([seed, 2**31])  # a stream of its own: the other weights stay init_params'
    for k in ("cls", "pos"):
        params[k] = (recipe.pos_init_std * rng.standard_normal(params[k].shape)).astype(np.float32)
    return params


def _write_metrics(out_dir, recipe, seed, history):
    text = json.dumps({"recipe": recipe.to_dict(), "seed": seed, "history": history}, indent=1)
    atomic_write(os.path.join(out_dir, "metrics.json"), text.encode())


LOCK_NAME = ".vitlib-run.lock"


class OutDirBusy(RuntimeError):
    """Another run holds the output folder."""


@contextlib.contextmanager
def own_out_dir(out_dir):
    """Hold the output folder for a run: an advisory lock (fcntl.flock) on DIR/.vitlib-run.lock, which
    also records the holder's pid. A second run on the same folder raises OutDirBusy naming that pid.
    The kernel releases the lock when the holder exits, even by kill -9."""
    import fcntl

    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir must be a directory, got {out_dir!r}, which is a file")
    os.makedirs(out_dir, exist_ok=True)
    fd = os.open(os.path.join(out_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutDirBusy(
            f"{out_dir!r} is in use by another run (process {holder}); wait for it or choose another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(out_dir):
    """Delete the half-written temporaries (atomic_write's .NAME.PID.XXXX.tmp) of checkpoint.npz and
    metrics.json left by a killed process: only those whose writer's pid is not alive (or is ours)."""
    for f in os.listdir(out_dir):
        if not (f.endswith(".tmp") and f.startswith((".checkpoint.npz.", ".metrics.json."))):
            continue
        pid = f.split(".")[3]  # "", "checkpoint", "npz", PID, XXXX, "tmp"
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out_dir, f))


def train(recipe: Recipe | None = None, seed=0, out_dir=None, resume=False, progress=True, callback=None, log=None):
    """Train on digits; -> dict(params, cfg, recipe, opt_state, history, test_acc, elapsed).

    out_dir: if given, DIR/checkpoint.npz and DIR/metrics.json are rewritten atomically after
    every epoch; the run holds DIR (own_out_dir: a second run on it raises OutDirBusy with this
    run's pid). resume: continue from DIR/checkpoint.npz (its recipe and seed win over the
    arguments); metrics.json is rewritten from the checkpoint's history at once.
    callback(info) is called after every step with info = dict(epoch, step, lr, loss,
    params (after the update), grads (of the update)).
    progress: a bar of the steps (epoch, step, images/s, the epoch's running loss, ETA), and one line at every
    epoch's end (epoch_line); without the bar, log(line) is called with that line, if log is given.
    history: one dict per epoch: epoch, train_loss (mean over the epoch's augmented batches, each
    before its update; against the smoothed labels when recipe.label_smoothing > 0), train_acc (at the epoch's
    end, on as many training images as there are test images,
    at most TRAIN_ACC_IMAGES), test_acc (both by predict, with recipe.tta_flip),
    lr (of the epoch's last step), time (s, this epoch, evaluation included), step_time (s, its steps alone),
    grad_norm (per layer, mean over the steps).
    """
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a vitlib.train.Recipe, got {type(recipe).__name__}")
    recipe = recipe or Recipe()
    seed = check_int("seed", seed, 0)
    with contextlib.ExitStack() as owner:
        if out_dir:  # one run owns a folder, from before its checkpoint is read to after the last write
            owner.enter_context(own_out_dir(out_dir))
            remove_stale_temporaries(out_dir)
        return _train(recipe, seed, out_dir, resume, progress, callback, log)


def resume_state(ckpt) -> tuple[Recipe, int, dict]:
    """The recipe, seed and training state of a checkpoint to resume; ValueError naming what is wrong."""
    state = load_training_state(ckpt)
    stored = state["recipe"]
    if not isinstance(stored, dict) or state["epoch"] is None or "recipe" not in stored or "seed" not in stored:
        raise ValueError(f"{ckpt!r} holds no training state to resume from (saved without a recipe)")
    try:
        recipe = Recipe.from_dict(stored["recipe"])
        seed = check_int("seed", stored["seed"], 0)
        epoch = check_int("epoch", state["epoch"], 0, recipe.epochs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{ckpt!r}: the stored recipe cannot be resumed: {exc}") from None
    history = state["history"] or []
    if not isinstance(history, list) or len(history) != epoch:
        raise ValueError(f"{ckpt!r}: the history must list {epoch} epochs, got {history!r:.80}")
    if state["opt_state"] is None:
        raise ValueError(f"{ckpt!r} holds no optimizer state to resume from")
    return recipe, seed, {**state, "epoch": epoch, "history": list(history)}


def _train(recipe, seed, out_dir, resume, progress, callback, log):
    start_epoch, history, opt_state, params = 0, [], None, None
    ckpt = os.path.join(out_dir, "checkpoint.npz") if out_dir else None
    if resume and ckpt and os.path.exists(ckpt):
        recipe, seed, state = resume_state(ckpt)
        params, opt_state = state["params"], state["opt_state"]
        start_epoch, history = state["epoch"], state["history"]
        # metrics.json follows from the checkpoint: a kill between writing the two cannot leave it behind
        _write_metrics(out_dir, recipe, seed, history)
    cfg = recipe.model_config()
    if params is None:
        params = init_model(recipe, seed)
        opt_state = init_optimizer(recipe.optimizer, params)
    x_train, y_train, x_test, y_test = load_data(recipe)
    background = float(model_input(recipe, np.zeros(1))[0])  # what a shift uncovers: a black pixel
    n, B = len(x_train), recipe.batch_size
    steps_per_epoch = -(-n // B)
    n_acc = min(n, len(x_test), TRAIN_ACC_IMAGES)  # train accuracy on this many training images
    total, warmup = recipe.epochs * steps_per_epoch, max(1, round(recipe.warmup_epochs * steps_per_epoch))
    t_run, cpu_run = time.perf_counter(), time.process_time()
    lr, bar = None, None
    with contextlib.ExitStack() as stack:
        if B * cfg.num_tokens < MIN_PARALLEL_ROWS:  # a small model's step runs in one part: BLAS's threads only spin
            stack.enter_context(blas_threads(1))
        else:  # the batch's parts beyond the first in processes of their own, not threads (vitlib/fast.py)
            stack.enter_context(worker_processes())
        if progress:
            from tqdm.auto import tqdm

            bar = stack.enter_context(
                tqdm(total=total, initial=start_epoch * steps_per_epoch, unit="step", dynamic_ncols=True)
            )
        say = bar.write if bar is not None else log
        for epoch in range(start_epoch, recipe.epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(n)
            loss_sum = 0.0
            norm_sum = None
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{recipe.epochs}", refresh=False)
            for i in range(steps_per_epoch):
                idx = order[i * B : (i + 1) * B]
                xb = random_shift(x_train[idx], rng, recipe.shift, recipe.shift_prob, fill=background)
                if recipe.flip_prob > 0:  # drawn only when used: the digits' batches are those of earlier versions
                    xb = random_flip(xb, rng, recipe.flip_prob)
                step = epoch * steps_per_epoch + i
                lr = lr_at(step, total, recipe.lr, warmup)
                loss, params, opt_state, grads = train_step(
                    params,
                    opt_state,
                    xb,
                    y_train[idx],
                    cfg,
                    lr,
                    recipe.optimizer,
                    recipe.weight_decay,
                    recipe.momentum,
                    recipe.label_smoothing,
                )
                if not np.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at epoch {epoch}, step {step}: lower the lr")
                loss_sum += loss * len(idx)
                norms = layer_grad_norms(grads, cfg)
                norm_sum = norms if norm_sum is None else {k: norm_sum[k] + v for k, v in norms.items()}
                if callback is not None:
                    callback(dict(epoch=epoch, step=step, lr=lr, loss=loss, params=params, grads=grads))
                if bar is not None:
                    seen = min(n, (i + 1) * B)
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{rate:.0f} img/s, loss {loss_sum / seen:.3f}, lr {lr:.1e}", refresh=False)
                    bar.update(1)
            t_steps = time.perf_counter() - t0
            test_acc = float((predict(params, x_test, cfg, tta_flip=recipe.tta_flip) == y_test).mean())
            train_acc = float(
                (predict(params, x_train[:n_acc], cfg, tta_flip=recipe.tta_flip) == y_train[:n_acc]).mean()
            )
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / n,
                "train_acc": train_acc,
                "test_acc": test_acc,
                "lr": lr,
                "time": time.perf_counter() - t0,
                "step_time": t_steps,
                "grad_norm": {k: v / steps_per_epoch for k, v in norm_sum.items()},
            }
            history.append(record)
            if out_dir:
                save_checkpoint(
                    ckpt,
                    params,
                    cfg,
                    opt_state=opt_state,
                    epoch=epoch + 1,
                    rng_state=rng.bit_generator.state,
                    history=history,
                    recipe={"recipe": recipe.to_dict(), "seed": seed},
                )
                _write_metrics(out_dir, recipe, seed, history)
            if say is not None:
                say(epoch_line(record, recipe.epochs, len(x_test)))
        if history:
            test_acc = history[-1]["test_acc"]
        else:
            test_acc = float((predict(params, x_test, cfg, tta_flip=recipe.tta_flip) == y_test).mean())
    elapsed, cpu = time.perf_counter() - t_run, time.process_time() - cpu_run
    return {
        "params": params,
        "cfg": cfg,
        "recipe": recipe,
        "seed": seed,
        "opt_state": opt_state,
        "history": history,
        "test_acc": test_acc,
        "elapsed": elapsed,
        "cpu_time": cpu,
    }
