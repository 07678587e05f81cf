"""Where one training step's time goes, line by line (line_profiler==5.1.0, a dev tool; not in requirements.txt).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py --config b --path fast
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py --config b --path teaching

One thread (one batch part, single-threaded BLAS) by default: the profile of the work itself; the
2-thread step runs the same lines on each half of the batch at once.

Prints line_profiler's per-line table for the functions of the chosen path, then a short summary
of the most expensive lines (share of the profiled total).
"""

import argparse
import io
import sys
from pathlib import Path

from line_profiler import LineProfiler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import make_inputs  # noqa: E402

import vitlib  # noqa: E402
from vitlib import attention, fast, gelu, layernorm, linear, model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="b")
    ap.add_argument("--path", default="fast", choices=["fast", "teaching"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--full", action="store_true", help="print line_profiler's whole table")
    ap.add_argument("--threads", type=int, default=1, help="vitlib.fast.THREADS (batch parts)")
    ap.add_argument("--batch", type=int, help="the first BATCH images of the config's batch (default: all)")
    args = ap.parse_args()
    cfg, params, x, y = make_inputs(args.config)
    if args.batch:
        x, y = x[: args.batch], y[: args.batch]
    fast_flag = args.path == "fast"
    lp = LineProfiler()
    if fast_flag:
        fast.THREADS = args.threads  # one part by default: line_profiler times one thread's lines
        funcs = [
            fast.fast_loss_and_grads,
            fast._forward,
            fast._backward,
            gelu.gelu_forward_fused,
            layernorm.layernorm_forward_fused,
            layernorm.layernorm_backward_fused,
            attention.softmax_forward_fused,
            attention.softmax_backward_fused,
            gelu.phi_float32,
            gelu._horner,
        ]
    else:
        funcs = [
            model.forward,
            model.backward,
            model.block_forward,
            model.block_backward,
            attention.attention_forward,
            attention.attention_backward,
            gelu.gelu_forward,
            gelu.gelu_backward,
            layernorm.layernorm_forward,
            layernorm.layernorm_backward,
            linear.linear_forward,
            linear.linear_backward,
        ]
    for f in funcs:
        lp.add_function(f)
    for _ in range(3):
        vitlib.loss_and_grads(params, x, y, cfg, fast=fast_flag)
    wrapped = lp(vitlib.loss_and_grads)
    for _ in range(args.steps):
        wrapped(params, x, y, cfg, fast=fast_flag)
    stats = lp.get_stats()
    buf = io.StringIO()
    lp.print_stats(stream=buf, output_unit=1e-3)
    if args.full:
        print(buf.getvalue())
    # summary: the leaf lines (those of functions that call no other profiled function) by time
    rows = []
    for (fname, _, func), timings in stats.timings.items():
        src = Path(fname).read_text().splitlines()
        for ln, _, t in timings:
            rows.append((t * stats.unit / args.steps * 1e3, func, ln, src[ln - 1].strip()))
    total = [r for r in rows if r[1] == "loss_and_grads"]
    step_ms = sum(r[0] for r in total)
    print(f"# {args.path} path, config {args.config}: {step_ms:.1f} ms a step (profiled, {args.steps} steps)")
    print("| ms/step | share | function:line | code |")
    print("|---:|---:|---|---|")
    nested = {f.__name__ for f in funcs}
    for t, func, ln, code in sorted(rows, reverse=True)[:40]:
        if any(code.startswith(n) or f" {n}(" in code or f"={n}(" in code or f"= {n}(" in code for n in nested):
            continue  # a call into another profiled function: its lines are listed themselves
        print(f"| {t:.2f} | {100 * t / step_ms:.0f}% | {func}:{ln} | `{code[:90]}` |")


if __name__ == "__main__":
    main()
