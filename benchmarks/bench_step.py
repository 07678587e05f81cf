"""Time one training step, vitlib.loss_and_grads against torch autograd eager, and print a markdown table.

    .venv/bin/python benchmarks/bench_step.py              # configs a and b, 7 rounds
    .venv/bin/python benchmarks/bench_step.py --rounds 3 --configs a
    .venv/bin/python benchmarks/bench_step.py --compare /tmp/before   # + vitlib from another source tree, same rounds
    .venv/bin/python benchmarks/bench_step.py --archs                 # + vitlib's fast step for every arch x pool
    .venv/bin/python benchmarks/bench_step.py --configs a,b,c --compile  # + (c) and torch.compile
    .venv/bin/python benchmarks/bench_step.py --configs d --compile --processes  # + parts in worker processes

A step is forward + softmax cross-entropy + backward to every parameter's gradient, float32,
the same weights on both sides (vitlib.interop.to_lucidrains), 2 threads each. Each side runs in a
process of its own (in one process numpy's OpenBLAS threads keep spinning after each call and take
a core from torch), the sides alternate round by round, and each number is the median over rounds
of each process's median step. The load average is printed with the numbers: the machine is shared.

Also printed: the bytes of the activations the backward pass needs against the peak memory of one
step (tracemalloc, which sees numpy's allocations), and GFLOP/s (3 x the forward's matmul FLOPs per
step) against this machine's large-matmul GFLOP/s (a 2048^3 matmul, numpy and torch, 2 threads).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
CONFIGS = {
    "a": dict(
        batch=64,
        cfg=dict(image_size=8, patch_size=2, num_classes=10, dim=64, depth=4, heads=4, mlp_dim=128, channels=1),
        dim_head=16,
    ),
    "b": dict(
        batch=32,
        cfg=dict(image_size=32, patch_size=4, num_classes=10, dim=128, depth=4, heads=4, mlp_dim=256, channels=3),
        dim_head=32,
    ),
    # issue 11's configuration, the first Fashion-MNIST recipe's model: 28x28x1 images in 4x4 patches (49 tokens + cls)
    "c": dict(
        batch=128,
        cfg=dict(image_size=28, patch_size=4, num_classes=10, dim=64, depth=4, heads=4, mlp_dim=128, channels=1),
        dim_head=16,
    ),
    # the Fashion-MNIST recipe's model (vitlib.train.DEFAULTS): 7x7 patches (16 tokens + cls), 6 blocks, batches of 64
    "d": dict(
        batch=64,
        cfg=dict(image_size=28, patch_size=7, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128, channels=1),
        dim_head=16,
    ),
}
HERE = Path(__file__).resolve().parent


def make_cfg(name, style="lucidrains", pool="cls"):
    """Config `name`'s sizes as architecture `style` (within its constraints: the exercise's blocks are square)."""
    import vitlib

    c = CONFIGS[name]
    sizes = dict(c["cfg"], dim_head=c["dim_head"])
    arch = getattr(vitlib, "arch", None)  # absent in a tree from before vitlib.arch (--compare)
    if arch is not None:
        a = arch.ARCHS[style]
        if a.mlp_is_dim:
            sizes["mlp_dim"] = sizes["dim"]
        if a.inner_is_dim:
            sizes["dim_head"] = sizes["dim"] // sizes["heads"]
    return vitlib.ViTConfig(**sizes, pool=pool, style=style), c["batch"]


def make_inputs(name, style="lucidrains", pool="cls"):
    """The same float32 weights and batch in every process."""
    import numpy as np

    import vitlib

    cfg, N = make_cfg(name, style, pool)
    params = vitlib.init_params(cfg, seed=0, dtype=np.float32)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, cfg.channels, *cfg.image_size)).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, N)
    return cfg, params, x, y


def matmul_flops(cfg, N):
    """FLOPs of one training step's matmuls: the forward's, times 3 (backward: dX and dW for each)."""
    T, D, I, M, H, Dh = cfg.num_tokens, cfg.dim, cfg.inner_dim, cfg.mlp_dim, cfg.heads, cfg.dim_head
    R = N * T
    fwd = 2 * N * cfg.num_patches * cfg.patch_dim * D + 2 * N * D * cfg.num_classes
    block = 2 * R * D * 3 * I + 2 * (2 * N * H * T * T * Dh) + 2 * R * D * M * 2
    if cfg.has_w_o:
        block += 2 * R * I * D
    return 3 * (fwd + cfg.depth * block)


def timed(step, reps, warmup=3):
    for _ in range(warmup):
        step()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------- workers (one process each)


def worker_numpy(name, reps, fast, style="lucidrains", pool="cls", processes=False):
    import contextlib

    import vitlib

    cfg, params, x, y = make_inputs(name, style, pool)
    last = {}

    def step():
        last["loss"], _ = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)

    with contextlib.ExitStack() as stack:
        if processes:  # the training loop's way (train()); imported here: a --compare tree may predate it
            from vitlib.fast import worker_processes

            stack.enter_context(worker_processes())
        times = timed(step, reps)
    return {"times": times, "loss": last["loss"]}


def worker_torch(name, reps, compiled=False):
    import numpy as np
    import torch
    import torch.nn.functional as F

    import vitlib
    from vit_oracles import lucidrains_from_cfg  # the forum post's module, the tests' oracle

    torch.set_num_threads(THREADS)
    cfg, params, x, y = make_inputs(name)
    model = lucidrains_from_cfg(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in vitlib.interop.to_lucidrains(params, cfg).items()})
    source = "vit_oracles.LucidrainsViT"
    if compiled:  # torch.compile (inductor, CPU): the first warm-up step compiles forward and backward
        model = torch.compile(model)
    xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(y))
    last = {}

    def step():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        last["loss"] = loss.item()

    times = timed(step, reps)
    return {"times": times, "loss": last["loss"], "source": source}


def worker_memory(name):
    """Bytes: the teaching path's cached activations, the fast workspace, tracemalloc peaks of one step."""
    import tracemalloc

    import numpy as np

    import vitlib
    from vitlib import fast
    from vitlib.loss import cross_entropy_backward, cross_entropy_forward

    cfg, params, x, y = make_inputs(name)
    logits, caches = vitlib.forward(params, x, cfg)
    param_ids = {id(v) for v in params.values()}
    seen, cached = set(), 0

    def walk(obj):
        nonlocal cached
        if isinstance(obj, np.ndarray):
            base = obj if obj.base is None else obj.base
            if id(base) not in seen and id(obj) not in param_ids and id(base) not in param_ids:
                seen.add(id(base))
                cached += base.nbytes
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                walk(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                walk(o)

    walk(caches)
    del caches, logits

    def peak(fn):
        tracemalloc.start()
        fn()
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p

    def teaching():
        out, c = vitlib.forward(params, x, cfg)
        loss, cl = cross_entropy_forward(out, y)
        vitlib.backward(cross_entropy_backward(1.0, cl), c, cfg)

    fast._WORKSPACES.clear()
    cold = peak(lambda: vitlib.loss_and_grads(params, x, y, cfg))
    warm = peak(lambda: vitlib.loss_and_grads(params, x, y, cfg))
    kept = ("xhat1", "rstd1", "Z1", "QKV", "A", "O", "xhat2", "rstd2", "Z2", "G", "dgelu")
    wss = list(fast._WORKSPACES.values())  # one for each part of the batch (thread)
    saved = sum(a.nbytes for a in {id(a): a for ws in wss for k in kept for a in getattr(ws, k)}.values())
    grads = sum(v.nbytes for v in params.values())
    return {
        "cached_teaching": cached,
        "peak_teaching": peak(teaching),
        "workspace": sum(ws.nbytes() for ws in wss),
        "parts": len(wss),
        "workspace_saved": saved,
        "peak_fast_cold": cold,
        "peak_fast_warm": warm,
        "grads": grads,
    }


def worker_peak(reps=3):
    """GFLOP/s of a large float32 matmul (2048^3), numpy and torch, median of reps."""
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    c = np.empty_like(a)
    tn = statistics.median(timed(lambda: np.matmul(a, a, out=c), reps, warmup=1))
    at = torch.from_numpy(a)
    ct = torch.empty_like(at)
    tt = statistics.median(timed(lambda: torch.matmul(at, at, out=ct), reps, warmup=1))
    return {"numpy": 2 * n**3 / tn / 1e9, "torch": 2 * n**3 / tt / 1e9}


# ---------------------------------------------------------------- driver


def run_worker(*args, source=None):
    """One worker process; `source`: a vitlib source tree to import instead of this one (PYTHONPATH)."""
    env = dict(
        os.environ, OMP_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS)
    )
    if source:
        env["PYTHONPATH"] = str(source)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *map(str, args)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="a,b", help="a, b, c, d (c: issue 11's model; d: the Fashion-MNIST recipe's)")
    ap.add_argument("--rounds", type=int, default=7, help="processes per side and config, alternating")
    ap.add_argument("--reps", type=int, default=20, help="timed steps per process (after 3 warm-up steps)")
    ap.add_argument("--teaching", action="store_true", help="also time the teaching path (fast=False)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (each process compiles once)")
    ap.add_argument("--processes", action="store_true", help="also time vitlib with the parts in worker processes")
    ap.add_argument("--compare", metavar="DIR", help="also time vitlib's fast step from the source tree DIR")
    ap.add_argument("--archs", action="store_true", help="also time vitlib's fast step for every arch x pool")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "numpy":
            res = worker_numpy(rest[0], int(rest[1]), True, *rest[2:])
        elif kind == "processes":
            res = worker_numpy(rest[0], int(rest[1]), True, processes=True)
        elif kind == "teaching":
            res = worker_numpy(rest[0], int(rest[1]), fast=False)
        elif kind == "torch":
            res = worker_torch(rest[0], int(rest[1]))
        elif kind == "compile":
            res = worker_torch(rest[0], int(rest[1]), compiled=True)
        elif kind == "memory":
            res = worker_memory(rest[0])
        else:
            res = worker_peak()
        print(json.dumps(res))
        return

    import numpy as np
    import scipy
    import torch

    names = args.configs.split(",")
    sides = ["numpy", "torch"] + (["compile"] if args.compile else []) + (["processes"] if args.processes else [])
    sides += (["teaching"] if args.teaching else []) + (["compare"] if args.compare else [])
    if args.archs:
        from vitlib.arch import cases

        sides += [f"arch:{s}:{p}" for s, p in cases()]
    load0 = os.getloadavg()
    t_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    peak = run_worker("peak")
    medians = {(n, s): [] for n in names for s in sides}
    losses, source = {}, ""
    for r in range(args.rounds):
        for n in names:
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                if s == "compare":
                    res = run_worker("numpy", n, args.reps, source=args.compare)
                elif s.startswith("arch:"):
                    res = run_worker("numpy", n, args.reps, *s.split(":")[1:])
                else:
                    res = run_worker(s, n, args.reps)
                medians[(n, s)].append(statistics.median(res["times"]))
                losses[(n, s)] = res["loss"]
                source = res.get("source", source)
        print(f"# round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    memory = {n: run_worker("memory", n) for n in names}
    load1 = os.getloadavg()

    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    cmd = f"{exe} benchmarks/bench_step.py " + " ".join(sys.argv[1:])
    print(f"Command: `{cmd.strip()}`  ")
    print(
        f"Started {t_start}; load average (1, 5, 15 min) {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start, ",
        end="",
    )
    print(f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at end, on {os.cpu_count()} cores.  ")
    versions = f"numpy {np.__version__}, scipy {scipy.__version__}, torch {torch.__version__}"
    print(f"{versions}, Python {platform.python_version()}; ", end="")
    print(f"{THREADS} threads a side; torch side: {source}.  ")
    print(f"Each time: median over {args.rounds} alternating processes", end=" ")
    print(f"of the median of {args.reps} steps (after 3 warm-up).  ")
    print(
        f"Large-matmul (2048^3 float32) GFLOP/s on this machine: numpy {peak['numpy']:.0f}, torch {peak['torch']:.0f}."
    )
    print()
    head = "| config | vitlib (ms) | torch eager (ms) | vitlib / torch |"
    line = "|---|---:|---:|---:|"
    if args.compile:
        head += " torch.compile (ms) | vitlib / compile |"
        line += "---:|---:|"
    if args.processes:
        head += " vitlib, worker processes (ms) | processes / threads |"
        line += "---:|---:|"
        if args.compile:
            head += " processes / compile |"
            line += "---:|"
    if args.teaching:
        head += " teaching path (ms) |"
        line += "---:|"
    head += " vitlib GFLOP/s | torch GFLOP/s | step GFLOP |"
    line += "---:|---:|---:|"
    print(head)
    print(line)
    for n in names:
        cfg, N = make_cfg(n)
        fl = matmul_flops(cfg, N)
        tv, tt = statistics.median(medians[(n, "numpy")]), statistics.median(medians[(n, "torch")])
        desc = f"({n}) N={N}, {cfg.image_size[0]}x{cfg.image_size[1]}x{cfg.channels}, P={cfg.patch_size[0]}, "
        desc += f"D={cfg.dim}, depth {cfg.depth}, H={cfg.heads}, Dh={cfg.dim_head}, M={cfg.mlp_dim}"
        row = f"| {desc} | {tv * 1e3:.1f} | {tt * 1e3:.1f} | **{tv / tt:.2f}** |"
        if args.compile:
            tc = statistics.median(medians[(n, "compile")])
            row += f" {tc * 1e3:.1f} | **{tv / tc:.2f}** |"
        if args.processes:
            tp = statistics.median(medians[(n, "processes")])
            row += f" {tp * 1e3:.1f} | **{tp / tv:.2f}** |" + (f" **{tp / tc:.2f}** |" if args.compile else "")
        if args.teaching:
            row += f" {statistics.median(medians[(n, 'teaching')]) * 1e3:.1f} |"
        row += f" {fl / tv / 1e9:.0f} | {fl / tt / 1e9:.0f} | {fl / 1e9:.2f} |"
        print(row)
    print()
    if args.compare:
        print(f"| config | vitlib, this tree (ms) | vitlib, {args.compare} (ms) | this / that |")
        print("|---|---:|---:|---:|")
        for n in names:
            tv, tc = statistics.median(medians[(n, "numpy")]), statistics.median(medians[(n, "compare")])
            print(f"| ({n}) | {tv * 1e3:.1f} | {tc * 1e3:.1f} | **{tv / tc:.2f}** |")
        print()
    if args.archs:
        arch_sides = [s for s in sides if s.startswith("arch:")]
        print("| config | " + " | ".join(f"{s[5:]} (ms)" for s in arch_sides) + " |")
        print("|---|" + "---:|" * len(arch_sides))
        for n in names:
            print(
                f"| ({n}) | " + " | ".join(f"{statistics.median(medians[(n, s)]) * 1e3:.1f}" for s in arch_sides) + " |"
            )
        print()
    mb = 1 / 2**20
    cols = [
        "activations cached by the teaching path (MB)",
        "its peak in one step (MB)",
        "fast workspace (MB)",
        "of which activations kept for backward (MB)",
        "peak fresh allocation, warm fast step (MB)",
        "first fast step, workspace included (MB)",
    ]
    print("| config | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for n in names:
        m = memory[n]
        print(
            f"| ({n}) | {m['cached_teaching'] * mb:.1f} | {m['peak_teaching'] * mb:.1f} | {m['workspace'] * mb:.1f} | "
            f"{m['workspace_saved'] * mb:.1f} | {m['peak_fast_warm'] * mb:.2f} | {m['peak_fast_cold'] * mb:.1f} |"
        )
    print()
    spread = ", ".join(f"{n}/{s} {min(v) * 1e3:.1f}-{max(v) * 1e3:.1f}" for (n, s), v in medians.items())
    print(f"Per-process medians, min-max (ms): {spread}.  ")
    print(
        "Losses (vitlib vs torch, same weights): "
        + ", ".join(f"{n} {losses[(n, 'numpy')]:.6f} vs {losses[(n, 'torch')]:.6f}" for n in names)
    )


if __name__ == "__main__":
    main()
