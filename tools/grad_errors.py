"""Measure vitlib's float64 gradients against torch autograd, per style: the README's table.

python tools/grad_errors.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import lucidrains_reference, random_batch, random_params, vit_pytorch_reference  # noqa: E402
from test_seed import seed_reference_grads  # noqa: E402

import vitlib  # noqa: E402

SIZES = dict(image_size=8, patch_size=2, num_classes=10, dim=64, depth=4, heads=4, mlp_dim=128, channels=1, dim_head=16)
REFERENCES = {  # the autograd oracle, and how to name vitlib's grads the way it does
    "seed": (seed_reference_grads, lambda grads, cfg: grads),
    "lucidrains": (lucidrains_reference, vitlib.interop.to_lucidrains),
    "vit-pytorch": (vit_pytorch_reference, vitlib.interop.to_vit_pytorch),
}
CASES = [
    ("seed", "cls", dict(mlp_dim=64)),
    ("lucidrains", "cls", {}),
    ("lucidrains", "mean", {}),
    ("vit-pytorch", "cls", {}),
    ("vit-pytorch", "mean", {}),
]


def main():
    print("| style | pool | tensors | max rel. error, fast path | max rel. error, teaching path | loss difference |")
    print("|---|---|---|---|---|---|")
    for style, pool, extra in CASES:
        cfg = vitlib.ViTConfig(**{**SIZES, **extra}, pool=pool, style=style)
        params = random_params(cfg, seed=0)
        x, y = random_batch(cfg, n=16, seed=0)
        reference, to_torch_names = REFERENCES[style]
        ref_loss, ref = reference(cfg, params, x, y)
        row = []
        for fast in (True, False):
            loss, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)
            g = to_torch_names(grads, cfg)
            assert g.keys() == ref.keys() and all(g[k].shape == ref[k].shape for k in ref)
            row.append(max(vitlib.rel_error(g[k], ref[k]) for k in ref))
        print(f"| {style} | {pool} | {len(ref)} | {row[0]:.1e} | {row[1]:.1e} | {abs(loss - ref_loss):.1e} |")
    print(f"\nconfig: {SIZES} (seed: mlp_dim=64), batch 16, float64, random LayerNorm scales and biases")


if __name__ == "__main__":
    main()
