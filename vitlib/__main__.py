"""Command line: train on digits, resume, evaluate.

python -m vitlib train --dataset digits --seed 0 --out runs/s0 [--resume] [--epochs 25 ...]
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
            result = train(out_dir=args.out, resume=True, progress=not args.no_progress)
        else:
            if os.path.exists(ckpt) and not args.resume:
                raise CLIError(f"{ckpt} exists; pass --resume to continue it, or choose another --out")
            try:
                recipe = Recipe(**given)
            except (TypeError, ValueError) as exc:
                raise CLIError(_recipe_error(exc)) from None
            seed = 0 if args.seed is None else args.seed
            result = train(recipe, seed=seed, out_dir=args.out, progress=not args.no_progress)
    except OutDirBusy as exc:
        raise CLIError(f"--out {exc}") from None
    except (OSError, FloatingPointError) as exc:  # a full disk, a run that diverged: the checkpoint stays whole
        raise CLIError(f"training stopped: {type(exc).__name__}: {exc}") from None
    n_params = sum(p.size for p in result["params"].values())
    print(f"model: {result['cfg']}  ({n_params} parameters)")
    print(f"seed {result['seed']}: test accuracy {result['test_acc']:.4f} after {len(result['history'])} epochs")
    print(f"time: {result['elapsed']:.1f} s wall, {result['cpu_time']:.1f} s CPU (the epochs run by this process)")
    print(f"checkpoint: {ckpt}  metrics: {os.path.join(args.out, 'metrics.json')}")


def _evaluate(args):
    from .checkpoint import load_checkpoint
    from .data import load_digits_split
    from .train import confusion_matrix, predict

    params, cfg = load_checkpoint(args.checkpoint)
    digits = dict(image_size=(8, 8), channels=1, num_classes=10)
    got = dict(image_size=cfg.image_size, channels=cfg.channels, num_classes=cfg.num_classes)
    if got != digits:
        show = ", ".join
        raise CLIError(
            f"{args.checkpoint}: the model does not fit the digits data: expected "
            f"{show(f'{k}={v}' for k, v in digits.items())}, got {show(f'{k}={v}' for k, v in got.items())}"
        )
    _, _, x_test, y_test = load_digits_split(dtype=next(iter(params.values())).dtype)
    pred = predict(params, x_test, cfg)
    acc = float((pred == y_test).mean())
    print(f"test accuracy: {acc:.4f} ({int((pred == y_test).sum())}/{len(y_test)})")
    C = confusion_matrix(y_test, pred, cfg.num_classes)
    width = max(3, len(str(C.max())) + 1)
    print("confusion matrix (rows: true class, columns: predicted class)")
    print("     " + "".join(f"{j:>{width}}" for j in range(cfg.num_classes)))
    for i, row in enumerate(C):
        print(f"{i:>4} " + "".join(f"{v:>{width}}" for v in row))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["grade"]:  # python -m vitlib grade FILE.py | --list: vitlib/grade/cli.py parses the rest
        from .grade.cli import main as grade_main

        sys.exit(grade_main(argv[1:]))
    from .train import Recipe

    parser = argparse.ArgumentParser(prog="python -m vitlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on digits, writing DIR/checkpoint.npz and DIR/metrics.json every epoch")
    t.add_argument("--dataset", choices=["digits"], default=None)
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz if it exists")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in dataclasses.fields(Recipe):
        if f.name == "dataset":
            continue
        kind = float if isinstance(f.default, float) else str if isinstance(f.default, str) else int
        t.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None, help=f"default {f.default!r}"
        )
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
            except (ValueError, FileNotFoundError) as exc:
                raise CLIError(str(exc)) from None
    except CLIError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
