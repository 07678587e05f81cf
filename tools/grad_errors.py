"""Measure vitlib's float64 gradients against torch autograd, for every architecture x pool: the README's table.

python tools/grad_errors.py

Every row of vitlib.arch.ARCHS is measured against its independent torch reference
(vit_oracles.reference_grads: the exercise's text, the forum's module, vit-pytorch, transformers).
"""

import vitlib
from vit_oracles import randomize_norms, reference_grads
from vitlib.arch import ARCHS, cases

SIZES = dict(image_size=8, patch_size=2, num_classes=10, dim=64, depth=4, heads=4, mlp_dim=128, channels=1, dim_head=16)


def sizes(style):
    """SIZES, within what the architecture allows (the exercise's blocks are square, D = H * Dh)."""
    arch, s = ARCHS[style], dict(SIZES)
    if arch.mlp_is_dim:
        s["mlp_dim"] = s["dim"]
    if arch.inner_is_dim:
        s["dim_head"] = s["dim"] // s["heads"]
    return s


def exactly_zero(name):
    """db_k: zero in exact arithmetic (softmax is shift-invariant along a row); both sides hold round-off."""
    return name.endswith(".b_k")


def main():
    print(
        "| style | pool | tensors | max rel. error, fast path | max rel. error, teaching path | loss difference "
        "| max abs(db_k) / max abs(grad) |"
    )
    print("|---|---|---|---|---|---|---|")
    for style, pool in cases():
        cfg = vitlib.ViTConfig(**sizes(style), pool=pool, style=style)
        params = randomize_norms(vitlib.init_params(cfg, seed=0, dtype="float64"), seed=0, embeddings=True)
        x, y = random_batch(cfg, n=16)
        ref_loss, ref = reference_grads(cfg, params, x, y)
        row, zero = [], []
        scale = max(abs(v).max(initial=0.0) for v in ref.values())
        for fast in (True, False):
            loss, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)
            assert grads.keys() == ref.keys() and all(grads[k].shape == ref[k].shape for k in ref)
            row.append(max(vitlib.rel_error(grads[k], ref[k]) for k in ref if not exactly_zero(k)))
            zero += [max(abs(grads[k]).max(), abs(ref[k]).max()) / scale for k in ref if exactly_zero(k)]
        zeros = f"{max(zero):.0e}" if zero else "-"
        print(f"| {style} | {pool} | {len(ref)} | {row[0]:.1e} | {row[1]:.1e} | {abs(loss - ref_loss):.1e} | {zeros} |")
    print(f"\nconfig: {SIZES} (within each style's constraints), batch 16, float64, random LayerNorm scales and biases")


def random_batch(cfg, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed + 7)
    return rng.standard_normal((n, cfg.channels, *cfg.image_size)), rng.integers(0, cfg.num_classes, size=n)


if __name__ == "__main__":
    main()
