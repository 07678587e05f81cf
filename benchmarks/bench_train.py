"""Issue 11's Fashion-MNIST recipe trained twice, by vitlib and by torch (eager autograd), each in its own process,
one after the other in one run; prints test accuracy and wall time per epoch side by side.

    .venv/bin/python benchmarks/bench_train.py                    # the whole recipe (14 epochs), seed 0
    .venv/bin/python benchmarks/bench_train.py --epochs 1 --train-size 6000 --test-size 2000   # a quick look

Both sides run the same recipe (`Recipe(dataset="fashion-mnist")`, vitlib/train.py): the same initial weights
(vitlib's init, copied into the forum's lucidrains module by vitlib.interop), the same batches in the same order
with the same shifts and flips (vitlib.data's numpy augmentation, the same generator per epoch), AdamW with the same
learning rate at every step (warm-up, cosine), weight decay on the same tensors (the matrices), the same label
smoothing (torch's cross_entropy(label_smoothing=...)), the same prediction (with the recipe's tta_flip, the logits of
each image plus those of its mirror image), float32. Each epoch is timed the same way: its steps, then the test
accuracy and the train accuracy on 2000 training images. torch runs
with its default threads (one per core); vitlib cuts each batch in one part per core, the second part in a worker
process (vitlib/fast.py).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def recipe_from(args):
    from vitlib.train import Recipe

    return Recipe(dataset="fashion-mnist", epochs=args.epochs, train_size=args.train_size, test_size=args.test_size)


def run_vitlib(args):
    from vitlib.train import train

    result = train(recipe_from(args), seed=args.seed, progress=False, log=lambda line: print("vitlib", line))
    return [{k: h[k] for k in ("epoch", "train_loss", "test_acc", "time", "step_time")} for h in result["history"]]


def run_torch(args):
    import numpy as np
    import torch

    from vit_oracles.models import lucidrains_from_cfg
    from vitlib.data import random_flip, random_shift
    from vitlib.interop import to_lucidrains
    from vitlib.train import TRAIN_ACC_IMAGES, init_model, load_data, lr_at, model_input

    recipe = recipe_from(args)
    cfg = recipe.model_config()
    model = lucidrains_from_cfg(cfg).float()
    state = {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in to_lucidrains(init_model(recipe, args.seed), cfg).items()
    }
    model.load_state_dict(state)
    decay = [p for p in model.parameters() if p.ndim == 2]  # the matrices; vitlib: the W_ keys (no_decay_keys)
    rest = [p for p in model.parameters() if p.ndim != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=recipe.lr
    )
    x_train, y_train, x_test, y_test = load_data(recipe)
    background = float(model_input(recipe, np.zeros(1))[0])
    n, B = len(x_train), recipe.batch_size
    steps = -(-n // B)
    total, warmup = recipe.epochs * steps, max(1, round(recipe.warmup_epochs * steps))
    n_acc = min(n, len(x_test), TRAIN_ACC_IMAGES)

    def accuracy(x, y):  # as vitlib.train.predict: with recipe.tta_flip, the logits of x plus those of x mirrored
        model.eval()
        with torch.no_grad():
            chunks = [torch.from_numpy(x[i : i + 1000]) for i in range(0, len(x), 1000)]
            z = torch.cat([model(c) for c in chunks])
            if recipe.tta_flip:
                z = z + torch.cat([model(c.flip(-1)) for c in chunks])
        model.train()
        return float((z.argmax(-1).numpy() == y).mean())

    history = []
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, epoch])
        order = rng.permutation(n)
        loss_sum = 0.0
        for i in range(steps):
            idx = order[i * B : (i + 1) * B]
            xb = random_shift(x_train[idx], rng, recipe.shift, recipe.shift_prob, fill=background)
            if recipe.flip_prob > 0:
                xb = random_flip(xb, rng, recipe.flip_prob)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + i, total, recipe.lr, warmup)
            loss = torch.nn.functional.cross_entropy(
                model(torch.from_numpy(xb)), torch.from_numpy(y_train[idx]), label_smoothing=recipe.label_smoothing
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().item() * len(idx)
        t_steps = time.perf_counter() - t0
        test_acc = accuracy(x_test, y_test)
        accuracy(x_train[:n_acc], y_train[:n_acc])  # timed as vitlib's epoch is
        record = dict(epoch=epoch + 1, train_loss=loss_sum / n, test_acc=test_acc, time=time.perf_counter() - t0)
        record["step_time"] = t_steps
        print(f"torch epoch {epoch + 1}/{recipe.epochs}: train loss {record['train_loss']:.4f}, "
              f"test accuracy {test_acc:.4f}, {record['time']:.1f} s", flush=True)  # fmt: skip
        history.append(record)
    return history


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--sides", default="vitlib,torch")
    ap.add_argument("--save", help="also write the results as JSON to this file (benchmarks/results/fashion-mnist/)")
    ap.add_argument("--side", choices=["vitlib", "torch"], help=argparse.SUPPRESS)  # one side, in its own process
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        history = (run_vitlib if args.side == "vitlib" else run_torch)(args)
        with open(args.json, "w") as f:
            json.dump(history, f)
        return
    results = {}
    for side in args.sides.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "history.json")
            cmd = [sys.executable, __file__, "--side", side, "--json", out, "--seed", str(args.seed)]
            for flag in ("epochs", "train_size", "test_size"):
                if getattr(args, flag) is not None:
                    cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t0
            with open(out) as f:
                results[side] = (json.load(f), wall)
    sides = list(results)
    print()
    print("| epoch | " + " | ".join(f"{s} test acc | {s} s/epoch (steps) " for s in sides) + "|")
    print("|---:|" + "---:|---:|" * len(sides))
    for e in range(len(results[sides[0]][0])):
        cells = []
        for s in sides:
            h = results[s][0][e]
            cells.append(f"{h['test_acc']:.4f} | {h['time']:.1f} ({h['step_time']:.1f})")
        print(f"| {e + 1} | " + " | ".join(cells) + " |")
    print("| process wall (s) | " + " | ".join(f"| {results[s][1]:.1f}" for s in sides) + " |")
    if args.save:
        import platform

        import numpy as np

        doc = {
            "command": " ".join(["python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, numpy {np.__version__}",
            "sides": {s: {"history": h, "process_wall": w} for s, (h, w) in results.items()},
        }
        with open(args.save, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
