"""The Fashion-MNIST recipe's choices, one at a time: each variant of `Recipe(dataset="fashion-mnist")` trains for the
first --epochs epochs of its schedule (warm-up and cosine over the variant's own number of epochs), or with --full
the whole schedule, and the test accuracy after each epoch is printed beside the recipe's. Two variants run at once,
each in its own process with one core (OPENBLAS_NUM_THREADS=1), so the seconds per epoch of two variants run together
compare their costs roughly; --full compares whole schedules, which is what decides a recipe: the last epochs, at a
learning rate near zero, gain the most.

    .venv/bin/python benchmarks/fashion_ablation.py                 # 2 epochs of each variant, seed 0
    .venv/bin/python benchmarks/fashion_ablation.py --epochs 3 --variants recipe,shift2
    .venv/bin/python benchmarks/fashion_ablation.py --full --variants recipe,patch-4   # about 20 minutes each
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

# name -> the Recipe fields it changes (the recipe's defaults: vitlib.train.DEFAULTS["fashion-mnist"]: 7x7 patches,
# 6 blocks, 14 epochs). patch-4 is the first recipe (configuration (c) of bench_step.py: 4x4 patches, 4 blocks), and
# rows A to L of benchmarks/README.md's table were measured against it.
VARIANTS = {
    "recipe": {},
    "patch-4": {"patch_size": 4, "depth": 4, "epochs": 7},  # 49 tokens + cls: 2.1x the recipe's cost per image
    "patch-4-e10": {"patch_size": 4, "depth": 4, "epochs": 10},
    "depth-4-e22": {"depth": 4, "epochs": 22},  # 4 blocks for 22 epochs: about the recipe's compute
    "shift1": {"shift": 1, "shift_prob": 1.0},
    "shift2-half": {"shift": 2, "shift_prob": 0.5},
    "shift2": {"shift": 2, "shift_prob": 1.0},  # every image shifted by up to 2 pixels, as the digits' recipe does
    "no-flip": {"flip_prob": 0.0},
    "mean-pool": {"pool": "mean"},
    "raw-input": {"standardize": False},  # pixels / 255, not standardised
    "batch-32": {"batch_size": 32},  # twice the updates per epoch, at about the same images per second
    "batch-32-lr3": {"batch_size": 32, "lr": 3e-3},
    "vit-pytorch": {"style": "vit-pytorch"},  # LayerNorms around the patch linear, a final LayerNorm
    "mlp-256": {"mlp_dim": 256},
    "no-label-smoothing": {"label_smoothing": 0.0},  # the recipe before label smoothing 0.1 (rows M to P)
}


class Stop(Exception):
    pass


def one(name, epochs, seed, out, sizes):
    """In the child: train the variant, stop when epoch `epochs` begins (None: train it to its end), write its
    history to `out`."""
    from vitlib.train import Recipe, train

    def stop(info):
        if info["epoch"] == epochs:
            raise Stop

    with tempfile.TemporaryDirectory() as run:
        try:
            recipe = Recipe(dataset="fashion-mnist", **VARIANTS[name], **sizes)
            train(recipe, seed=seed, out_dir=run, progress=False, callback=stop)
        except Stop:
            pass
        with open(os.path.join(run, "metrics.json")) as f:
            history = json.load(f)["history"]
    with open(out, "w") as f:
        json.dump([{k: h[k] for k in ("epoch", "train_loss", "test_acc", "time")} for h in history], f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="stop each variant after this many epochs (default 2)")
    ap.add_argument("--full", action="store_true", help="train each variant's whole schedule (--epochs is ignored)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--save", help="also write the results as JSON to this file")
    ap.add_argument("--train-size", type=int, default=None, help="the first N training images only (a quick look)")
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = {k: getattr(args, k) for k in ("train_size", "test_size") if getattr(args, k) is not None}
    if args.child:
        return one(args.child, None if args.full else args.epochs, args.seed, args.json, sizes)
    if args.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {args.epochs}")
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:

        def run(name):
            out = os.path.join(tmp, name + ".json")
            cmd = [sys.executable, __file__, "--child", name, "--json", out, "--epochs", str(args.epochs),
                   "--seed", str(args.seed)]  # fmt: skip
            cmd += [f for k, v in sizes.items() for f in ("--" + k.replace("_", "-"), str(v))]
            cmd += ["--full"] if args.full else []
            subprocess.run(cmd, check=True, env=env)
            with open(out) as f:
                return name, json.load(f)

        with ThreadPoolExecutor(2) as pool:
            results = dict(pool.map(run, names))
    shown = max(len(h) for h in results.values())
    print("| variant | changes | " + " | ".join(f"test acc, epoch {e + 1}" for e in range(shown))
          + " | s per epoch (1 core) |")  # fmt: skip
    print("|---|---|" + "---:|" * (shown + 1))
    for name, history in results.items():
        change = ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items()) or "-"
        accs = [f"{h['test_acc']:.4f}" for h in history] + [""] * (shown - len(history))
        per_epoch = sum(h["time"] for h in history) / len(history)
        print(f"| {name} | {change} | " + " | ".join(accs) + f" | {per_epoch:.0f} |")
    if args.save:
        with open(args.save, "w") as f:
            json.dump(
                {"command": " ".join(["python", *sys.argv]), "variants": VARIANTS, "results": results}, f, indent=1
            )


if __name__ == "__main__":
    main()
