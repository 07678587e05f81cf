"""Two ways to predict better from the same training run, measured side by side on one Fashion-MNIST run: the
prediction with the mirror image (test-time augmentation: the argmax of logits(x) + logits(x[..., ::-1]),
`Recipe.tta_flip`) and an exponential moving average (EMA) of the weights.

    .venv/bin/python benchmarks/fashion_tta_ema.py --seed 1 --save results/fashion-mnist/tta-ema-seed1.json

It trains the recipe (`Recipe(dataset="fashion-mnist")`, evaluated by the run itself without the mirror) and keeps,
after every step, float64 EMAs of the parameters for each decay d of --decays (warmed up: the decay of step t is
min(d, (1 + t) / (10 + t))). At the end of each epoch from --from-epoch on it tests four predictions on the test
set: the weights (raw), raw with the mirror image, each EMA, each EMA with the mirror image; one JSON row per epoch.
Training is the same in all four: only the prediction differs, so the comparison is paired (one run, one seed).
"""

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--decays", default="0.999,0.9995,0.9998")
    ap.add_argument("--from-epoch", type=int, default=8, help="evaluate at the end of this epoch and after")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--save", help="write the rows as JSON to this file")
    args = ap.parse_args(argv)

    from vitlib.train import Recipe, load_data, predict, train

    recipe = Recipe(dataset="fashion-mnist", tta_flip=False, epochs=args.epochs, train_size=args.train_size,
                    test_size=args.test_size)  # fmt: skip
    cfg = recipe.model_config()
    x_train, _, x_test, y_test = load_data(recipe)
    steps_per_epoch = -(-len(x_train) // recipe.batch_size)
    decays = tuple(float(d) for d in args.decays.split(","))
    ema, rows = {}, []

    def accuracy(p, mirror):  # the recipe's own prediction, with or without the mirror
        return float((predict(p, x_test, cfg, tta_flip=mirror) == y_test).mean())

    def after_step(info):
        t, p = info["step"] + 1, info["params"]  # step counts from the run's start
        for d in decays:
            e = ema.setdefault(d, {k: v.astype(np.float64) for k, v in p.items()})
            dt = min(d, (1 + t) / (10 + t))
            for k, v in p.items():
                e[k] *= dt
                e[k] += (1 - dt) * v
        if t % steps_per_epoch == 0 and t // steps_per_epoch >= args.from_epoch:
            row = {"epoch": t // steps_per_epoch, "raw": accuracy(p, False), "raw_tta": accuracy(p, True)}
            for d in decays:
                e32 = {k: v.astype(np.float32) for k, v in ema[d].items()}
                row[f"ema{d}"] = accuracy(e32, False)
                row[f"ema{d}_tta"] = accuracy(e32, True)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.save:
                doc = {"command": " ".join(["python", *sys.argv]), "recipe": recipe.to_dict(), "seed": args.seed,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}  # fmt: skip
                with open(args.save, "w") as f:
                    json.dump(doc, f, indent=1)

    t0 = time.perf_counter()
    result = train(recipe, seed=args.seed, progress=False, callback=after_step, log=print)
    print(f"wall {time.perf_counter() - t0:.1f} s; the run's own (raw) test accuracy {result['test_acc']:.4f}")


if __name__ == "__main__":
    main()
