"""Command line: train on digits or Fashion-MNIST, resume, evaluate.

python -m vitlib train --dataset digits --seed 0 --out runs/s0 [--resume] [--epochs 25 ...]
python -m vitlib train --dataset fashion-mnist --out runs/f0        (after `make data`)
python -m vitlib evaluate runs/s0/checkpoint.npz
"""

import argparse
import dataclasses
import os
import sys

import numpy as np


class CLIError(Exception):
    """A bad flag or file: printed as one `error: ...` line, exit status 2 (argparse's convention)."""


def _flag(name):
    return "--" + name.replace("_", "-")


def _recipe_error(exc):
    """'lr must be ...' -> '--lr must be ...': name the flag the user typed."""
    msg = str(exc)
    first = msg.split(" ", 1)[0]
    from .train import Recipe

    if first in {f.name for f in dataclasses.fields(Recipe)}:
        msg = _flag(first) + msg[len(first) :]
    return msg


def _train(args):
    from .train import OutDirBusy, Recipe, resume_state, train

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out must name a directory, got {args.out!r}, which is a file")
    ckpt = os.path.join(args.out, "checkpoint.npz")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    if args.seed is not None and args.seed < 0:
        raise CLIError(f"--seed must be an integer >= 0, got {args.seed}")
    try:
        if args.resume and os.path.exists(ckpt):
            try:
                recipe, seed, state = resume_state(ckpt)
            except (TypeError, ValueError) as exc:
                raise CLIError(f"--resume: {exc}") from None
            stored = recipe.to_dict()
            clash = {k: (v, stored[k]) for k, v in given.items() if stored.get(k) != v}
            if args.seed is not None and args.seed != seed:
                clash["seed"] = (args.seed, seed)
            if clash:
                details = ", ".join(f"{_flag(k)} {a} (checkpoint: {b})" for k, (a, b) in clash.items())
                raise CLIError(f"--resume continues {ckpt} with its own settings; these flags differ: {details}")
            print(f"resuming {ckpt} from epoch {state['epoch']}", file=sys.stderr)
            result = train(out_dir=args.out, resume=True, progress=not args.no_progress, log=print)
        else:
            if os.path.exists(ckpt) and not args.resume:
                raise CLIError(f"{ckpt} exists; pass --resume to continue it, or choose another --out")
            try:
                recipe = Recipe(**given)
            except (TypeError, ValueError) as exc:
                raise CLIError(_recipe_error(exc)) from None
            seed = 0 if args.seed is None else args.seed
            result = train(recipe, seed=seed, out_dir=args.out, progress=not args.no_progress, log=print)
    except OutDirBusy as exc:
        raise CLIError(f"--out {exc}") from None
    except FileNotFoundError as exc:  # the data set is not installed: its message says how
        raise CLIError(str(exc)) from None
    except (OSError, FloatingPointError) as exc:  # a full disk, a run that diverged: the checkpoint stays whole
        raise CLIError(f"training stopped: {type(exc).__name__}: {exc}") from None
    n_params = sum(p.size for p in result["params"].values())
    print(f"model: {result['cfg']}  ({n_params} parameters)")
    print(f"seed {result['seed']}: test accuracy {result['test_acc']:.4f} after {len(result['history'])} epochs")
    print(f"time: {result['elapsed']:.1f} s wall, {result['cpu_time']:.1f} s CPU (the epochs run by this process)")
    print(f"checkpoint: {ckpt}  metrics: {os.path.join(args.out, 'metrics.json')}")


def _evaluate(args):
    from .checkpoint import load_training_state
    from .data import FASHION_MNIST_CLASSES
    from .train import DATASETS, Recipe, confusion_matrix, load_data, predict

    state = load_training_state(args.checkpoint)
    params, cfg = state["params"], state["cfg"]
    stored = state["recipe"]
    if isinstance(stored, dict) and isinstance(stored.get("recipe"), dict):
        try:  # the data set and input scaling the model was trained with, the whole test set
            recipe = dataclasses.replace(Recipe.from_dict(stored["recipe"]), train_size=None, test_size=None)
        except (TypeError, ValueError) as exc:
            raise CLIError(f"{args.checkpoint}: its stored recipe is not readable: {exc}") from None
    else:  # saved by save_checkpoint without a recipe: the data set its input size fits
        fits = [d for d, v in DATASETS.items() if cfg.image_size == (v["image_size"],) * 2]
        recipe = Recipe(dataset=fits[0] if fits else "digits")
    want = dict(image_size=(DATASETS[recipe.dataset]["image_size"],) * 2, channels=1, num_classes=10)
    got = dict(image_size=cfg.image_size, channels=cfg.channels, num_classes=cfg.num_classes)
    if got != want:
        show = ", ".join
        raise CLIError(
            f"{args.checkpoint}: the model does not fit the {recipe.dataset} data: expected "
            f"{show(f'{k}={v}' for k, v in want.items())}, got {show(f'{k}={v}' for k, v in got.items())}"
        )
    try:
        _, _, x_test, y_test = load_data(recipe)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    x_test = x_test.astype(next(iter(params.values())).dtype)
    pred = predict(params, x_test, cfg, tta_flip=recipe.tta_flip)
    acc = float((pred == y_test).mean())
    names = FASHION_MNIST_CLASSES if recipe.dataset == "fashion-mnist" else ("",) * 10  # a digit is its own name
    standardized = ", standardised" if recipe.standardize else ""
    print(f"{recipe.dataset}, {len(y_test)} test images (input: pixels / max{standardized})")
    if recipe.tta_flip:
        print("prediction: the argmax of the logits of each image plus those of its mirror image (tta_flip)")
    else:
        print("prediction: the argmax of the logits")
    print(f"test accuracy: {acc:.4f} ({int((pred == y_test).sum())}/{len(y_test)})")
    C = confusion_matrix(y_test, pred, cfg.num_classes)
    wide = max(map(len, names))
    print("per-class accuracy:")
    for k, name in enumerate(names):
        n_k = int(C[k].sum())
        print(f"  {k} {name:<{wide}} {C[k, k] / max(n_k, 1):.4f} ({C[k, k]}/{n_k})")
    width = max(4, len(str(C.max())) + 1)
    print("confusion matrix (rows: true class, columns: predicted class; numbers as above)")
    print(" " * (wide + 4) + "".join(f"{j:>{width}}" for j in range(cfg.num_classes)))
    for i, row in enumerate(C):
        print(f"  {i} {names[i]:<{wide}} " + "".join(f"{v:>{width}}" for v in row))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["grade"]:  # python -m vitlib grade FILE.py | --list: vitlib/grade/cli.py parses the rest
        from .grade.cli import main as grade_main

        sys.exit(grade_main(argv[1:]))
    from .train import DATASETS, DEFAULTS, Recipe

    parser = argparse.ArgumentParser(prog="python -m vitlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train", help="train on digits or Fashion-MNIST, writing DIR/checkpoint.npz and DIR/metrics.json every epoch"
    )
    t.add_argument("--dataset", choices=list(DATASETS), default=None, help="default 'digits'")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz if it exists")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (the epoch lines are still printed)")
    for f in dataclasses.fields(Recipe):
        if f.name == "dataset":
            continue
        by_data = {d: v[f.name] for d, v in DEFAULTS.items() if f.name in v}
        example = by_data["digits"] if by_data else f.default
        flag = _flag(f.name)
        show = ", ".join(f"{v!r} ({d})" for d, v in by_data.items()) if by_data else repr(f.default)
        if isinstance(example, bool):
            bool_flag = argparse.BooleanOptionalAction
            t.add_argument(flag, dest=f.name, action=bool_flag, default=None, help=f"default {show}")
            continue
        kind = float if isinstance(example, float) else str if isinstance(example, str) else int
        t.add_argument(flag, dest=f.name, type=kind, default=None, help=f"default {show}")
    e = sub.add_parser("evaluate", help="test accuracy and confusion matrix of a checkpoint")
    e.add_argument("checkpoint")
    args = parser.parse_args(argv)
    np.set_printoptions(linewidth=120)
    try:
        if args.command == "train":
            _train(args)
        else:
            try:
                _evaluate(args)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise CLIError(str(exc)) from None
    except CLIError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
