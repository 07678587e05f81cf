"""vitlib/fast.py (what loss_and_grads runs) against the teaching path (model.forward / backward).

Same loss and grads for every style and pooling, float32 and float64; inputs untouched;
the workspace reused without leaking into results; the float32 erf's accuracy.
"""

import os

import numpy as np
import pytest
from conftest import exactly_zero
from scipy.special import erf

import vitlib
from vitlib import fast
from vitlib.arch import ARCHS, Arch, cases
from vitlib.loss import cross_entropy_backward, cross_entropy_forward

TOL = {np.float64: 1e-12, np.float32: 2e-5}


def make_cfg(style, pool="cls", heads=2, dim_head=8, dim=16, mlp=24, channels=3):
    arch = ARCHS[style]
    if arch.mlp_is_dim:
        mlp = dim  # the exercise's blocks are all (d, d)
    if arch.inner_is_dim:
        dim_head = dim // heads
    return vitlib.ViTConfig(
        image_size=(8, 6),
        patch_size=2,
        num_classes=5,
        dim=dim,
        depth=2,
        heads=heads,
        mlp_dim=mlp,
        pool=pool,
        channels=channels,
        dim_head=dim_head,
        style=style,
    )


def make_inputs(cfg, dtype, N=5, seed=0):
    rng = np.random.default_rng(seed)
    params = vitlib.init_params(cfg, seed=seed, dtype=dtype)
    # perturb LayerNorm gammas/betas and the rest, so no term is trivially 1 or 0
    params = {k: (v + 0.3 * rng.standard_normal(v.shape)).astype(dtype) for k, v in params.items()}
    x = rng.standard_normal((N, cfg.channels, *cfg.image_size))
    y = rng.integers(0, cfg.num_classes, N)
    return params, x, y


def teaching(params, x, y, cfg):
    """model.forward + cross-entropy + model.backward, the path fast.py must reproduce."""
    dtype = next(iter(params.values())).dtype
    out, caches = vitlib.forward(params, np.asarray(x, dtype=dtype), cfg)
    loss, c = cross_entropy_forward(out, y)
    return loss, vitlib.backward(cross_entropy_backward(1.0, c), caches, cfg)


def assert_same(cfg, params, x, y, dtype):
    loss0, g0 = teaching(params, x, y, cfg)
    loss1, g1 = vitlib.loss_and_grads(params, x, y, cfg)
    assert set(g1) == set(g0) == set(vitlib.param_shapes(cfg))
    tol = TOL[dtype]
    assert abs(loss1 - loss0) <= tol * max(1.0, abs(loss0))
    scale = max(float(np.abs(v).max(initial=0.0)) for v in g0.values())
    for k in g0:
        assert g1[k].dtype == dtype, (k, g1[k].dtype)  # no silent upcast
        assert g1[k].shape == g0[k].shape, k
        if exactly_zero(k):  # db_k: round-off on both paths (softmax's shift invariance), far below the rest
            assert max(np.abs(g1[k]).max(), np.abs(g0[k]).max()) < tol * scale, k
            continue
        assert vitlib.rel_error(g1[k], g0[k]) < tol, (k, vitlib.rel_error(g1[k], g0[k]))


CASES = cases()  # every architecture of vitlib.arch.ARCHS x every pool it has


@pytest.fixture(params=[1, 2, 3], ids=["1part", "2parts", "3parts"], autouse=True)
def parts(request, monkeypatch):
    """Every test runs with the batch in one part, and split in 2 and 3 parts (threads), even when small."""
    monkeypatch.setattr(fast, "THREADS", request.param)
    monkeypatch.setattr(fast, "MIN_PARALLEL_ROWS", 0)
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("style,pool", CASES)
def test_fast_matches_teaching_path(style, pool, dtype):
    cfg = make_cfg(style, pool)
    assert_same(cfg, *make_inputs(cfg, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("style,pool", CASES)
def test_one_head_as_wide_as_the_model(style, pool, dtype):
    """heads == 1 and dim_head == dim: lucidrains and vit-pytorch drop W_o (seed keeps it)."""
    cfg = make_cfg(style, pool, heads=1, dim_head=16, dim=16)
    assert cfg.has_w_o == (ARCHS[style].w_o == "always")
    assert_same(cfg, *make_inputs(cfg, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_other_shapes(dtype):
    """One channel, dim_head != dim / heads, a batch of one."""
    cfg = make_cfg("lucidrains", heads=3, dim_head=5, dim=12, mlp=7, channels=1)
    params, x, y = make_inputs(cfg, dtype, N=1)
    assert_same(cfg, params, x, y, dtype)


def test_teaching_path_flag():
    cfg = make_cfg("lucidrains")
    params, x, y = make_inputs(cfg, np.float64)
    loss0, g0 = teaching(params, x, y, cfg)
    loss1, g1 = vitlib.loss_and_grads(params, x, y, cfg, fast=False)
    assert loss1 == loss0
    assert all(np.array_equal(g1[k], g0[k]) for k in g0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inputs_not_modified(dtype):
    cfg = make_cfg("vit-pytorch", "mean")
    params, x, y = make_inputs(cfg, dtype)
    for xin in (x, x.astype(dtype)):  # a cast copy, and an array already of params' dtype
        before = ({k: v.copy() for k, v in params.items()}, xin.copy(), y.copy())
        vitlib.loss_and_grads(params, xin, y, cfg)
        assert all(np.array_equal(params[k], before[0][k]) for k in params)
        assert np.array_equal(xin, before[1]) and np.array_equal(y, before[2])


@pytest.mark.parametrize("style,pool", [("seed", "cls"), ("lucidrains", "cls"), ("vit-pytorch", "mean")])
def test_two_calls_in_a_row_are_identical(style, pool):
    cfg = make_cfg(style, pool)
    params, x, y = make_inputs(cfg, np.float32)
    loss1, g1 = vitlib.loss_and_grads(params, x, y, cfg)
    loss2, g2 = vitlib.loss_and_grads(params, x, y, cfg)
    assert loss1 == loss2
    assert all(np.array_equal(g1[k], g2[k]) for k in g1)


@pytest.mark.parametrize("style,pool", [("seed", "cls"), ("lucidrains", "mean"), ("vit-pytorch", "cls")])
def test_grads_are_fresh_and_not_aliased(style, pool):
    cfg = make_cfg(style, pool)
    params, x, y = make_inputs(cfg, np.float64)
    _, g1 = vitlib.loss_and_grads(params, x, y, cfg)
    kept = {k: v.copy() for k, v in g1.items()}
    arrays = [
        a
        for ws in fast._WORKSPACES.values()
        for v in vars(ws).values()
        for a in (v if isinstance(v, (list, tuple)) else [v])
        if isinstance(a, np.ndarray)
    ]
    assert len(arrays) > 20
    for k, v in g1.items():
        assert v.flags.owndata and v.flags.writeable, k
        assert not any(np.shares_memory(v, a) for a in arrays), k
        assert not any(np.shares_memory(v, p) for p in params.values()), k
    # a second call, on other data, must not overwrite the first call's grads
    params2, x2, y2 = make_inputs(cfg, np.float64, seed=1)
    _, g2 = vitlib.loss_and_grads(params2, x2, y2, cfg)
    assert all(np.array_equal(g1[k], kept[k]) for k in g1)
    # mutating returned grads must not change the next call's result
    for v in g1.values():
        v[...] = np.nan
    for v in g2.values():
        v[...] = np.nan
    _, g3 = vitlib.loss_and_grads(params, x, y, cfg)
    assert all(np.array_equal(g3[k], kept[k]) for k in g3)


def test_workspaces_for_several_batch_sizes_and_dtypes():
    cfg = make_cfg("lucidrains")
    for N, dtype in [(3, np.float64), (4, np.float32), (3, np.float64), (2, np.float64), (4, np.float32)]:
        params, x, y = make_inputs(cfg, dtype, N=N)
        assert_same(cfg, params, x, y, dtype)
    assert len(fast._WORKSPACES) <= fast.MAX_WORKSPACES


def test_workspace_cache_is_bounded():
    cfg = make_cfg("seed")
    for N in range(1, fast.MAX_WORKSPACES + 3):
        params, x, y = make_inputs(cfg, np.float32, N=N)
        vitlib.loss_and_grads(params, x, y, cfg)
    assert len(fast._WORKSPACES) == fast.MAX_WORKSPACES


def test_erf_float32_accuracy():
    """Max error 4.5e-7 over [-6, 6] (<= 8 ulps, all of them where erf rounds near +-1); odd; +-1 outside."""
    x = np.linspace(-6, 6, 400_001).astype(np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-6, 50.0, -50.0, np.inf, -np.inf])])
    out, z, p = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    got = fast.erf_float32(x, out, z, p)
    assert got.dtype == np.float32
    ref = erf(x.astype(np.float64))
    err = np.abs(got - ref)
    assert err.max() < 5e-7
    small = np.abs(x) < 0.5
    assert (err[small] / np.maximum(np.abs(ref[small]), 1e-38)).max() < 4e-7  # relative, near 0 too
    assert np.array_equal(got, -fast.erf_float32(-x, out.copy(), z, p))
    assert got[-2] == 1.0 and got[-1] == -1.0


def test_float32_gelu_against_scipy():
    """The exact GELU in float32 through the fast erf, against scipy's erf rounded to float32."""
    from vitlib.gelu import gelu_backward, gelu_forward

    U = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32) * 3
    G, dg = np.empty_like(U), np.empty_like(U)
    fast.gelu_forward_fused(U, G, dg, "none", np.empty_like(U), np.empty_like(U))
    G0, c = gelu_forward(U)
    dg0 = gelu_backward(np.ones_like(U), c)
    assert G0.dtype == np.float32
    assert vitlib.rel_error(G, G0) < 1e-6 and vitlib.rel_error(dg, dg0) < 1e-6


def test_phi_float32_accuracy():
    """Phi(u) = (1 + erf(u / sqrt 2)) / 2 with the rational folded in: within 3e-7 everywhere."""
    from scipy.special import ndtr

    u = np.concatenate([np.linspace(-9, 9, 400_001), [0.0, 1e-30, 50.0, -50.0, np.inf, -np.inf]]).astype(np.float32)
    out, z, p = np.empty_like(u), np.empty_like(u), np.empty_like(u)
    got = fast.phi_float32(u, out, z, p)
    assert got.dtype == np.float32
    assert np.abs(got - ndtr(u.astype(np.float64))).max() < 3e-7
    assert got[-2] == 1.0 and got[-1] == 0.0


def test_parts_and_blas_threads_restored(parts):
    cfg = make_cfg("lucidrains")
    params, x, y = make_inputs(cfg, np.float32, N=5)
    assert len(fast._parts(5, cfg.num_tokens)) == parts
    libs = fast._blas()
    before = [lib.num_threads for lib in libs]
    vitlib.loss_and_grads(params, x, y, cfg)
    assert [lib.num_threads for lib in libs] == before
    # a failing part must restore them too
    bad = dict(params, W_patch=params["W_patch"][:, :0])
    with pytest.raises(ValueError):
        fast.fast_loss_and_grads(bad, x.astype(np.float32), y, cfg)
    assert [lib.num_threads for lib in libs] == before


def test_blas_found_numpy_first():
    libs = fast._blas()
    if libs and any("numpy" in str(lib.filepath) for lib in libs):
        assert "numpy" in str(libs[0].filepath)


def test_parts_agree_with_one_part(monkeypatch):
    cfg = make_cfg("vit-pytorch", "mean")
    params, x, y = make_inputs(cfg, np.float64, N=7)
    monkeypatch.setattr(fast, "THREADS", 1)
    loss1, g1 = vitlib.loss_and_grads(params, x, y, cfg)
    monkeypatch.setattr(fast, "THREADS", 3)
    loss3, g3 = vitlib.loss_and_grads(params, x, y, cfg)
    assert abs(loss1 - loss3) < 1e-14
    assert all(vitlib.rel_error(g1[k], g3[k]) < 1e-13 for k in g1)


@pytest.mark.parametrize("gain", [1.0, 30.0, 1e3])
def test_wide_attention_scores(gain):
    """Scores spread wider than SHIFT_RANGE take the row-max shift; still the teaching path's result.
    (float64 only: with scores in the thousands float32 rounding of S alone moves grads by ~1e-4.)"""
    cfg = make_cfg("lucidrains")
    params, x, y = make_inputs(cfg, np.float64)
    for b in range(cfg.depth):
        params[f"blocks.{b}.W_q"] = params[f"blocks.{b}.W_q"] * gain
        params[f"blocks.{b}.W_k"] = params[f"blocks.{b}.W_k"] * gain
    assert_same(cfg, params, x, y, np.float64)


def test_shift_scores():
    S = np.array([[0.0, 1.0], [-500.0, 1.0]])
    fast.shift_scores(S, np.empty((2, 1)))
    assert S.max(axis=-1).tolist() == [0.0, 0.0]  # wide: each row by its own max
    S = np.array([[0.0, 1.0], [-50.0, 3.0]])
    fast.shift_scores(S, np.empty((2, 1)))
    assert S.tolist() == [[-3.0, -2.0], [-53.0, 0.0]]  # narrow: one shift, the global max


def test_calls_from_several_threads():
    """Workspaces are shared: concurrent callers are serialised, each gets its own right answer."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = make_cfg("lucidrains")
    inputs = [make_inputs(cfg, np.float64, seed=s) for s in range(4)]
    expected = [teaching(*inp, cfg) for inp in inputs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda inp: vitlib.loss_and_grads(*inp, cfg), inputs * 3))
    for (loss, g), (loss0, g0) in zip(results, expected * 3):
        assert abs(loss - loss0) < 1e-12
        assert all(vitlib.rel_error(g[k], g0[k]) < 1e-12 for k in g0)


def test_after_fork():
    """A forked child (multiprocessing's default on Linux) gets a thread pool of its own."""
    import multiprocessing

    cfg = make_cfg("seed")
    params, x, y = make_inputs(cfg, np.float32)
    loss, _ = vitlib.loss_and_grads(params, x, y, cfg)  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put(vitlib.loss_and_grads(params, x, y, cfg)[0]))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == loss


def test_a_flag_the_fast_path_does_not_implement_raises(monkeypatch):
    """An unknown flag value never falls through to a default: the fast path refuses it by name."""
    import dataclasses

    cfg = make_cfg("lucidrains")
    params, x, y = make_inputs(cfg, np.float64)
    odd = dataclasses.replace(ARCHS["lucidrains"], name="odd")
    object.__setattr__(odd, "gelu", "sigmoid")  # past Arch's own check, as a future flag value would be
    monkeypatch.setitem(ARCHS, "lucidrains", odd)
    with pytest.raises(NotImplementedError, match="gelu"):
        vitlib.loss_and_grads(params, x, y, cfg)
    monkeypatch.delitem(fast.SUPPORTED, "head_norm")  # a flag the fast path would not know
    monkeypatch.setitem(ARCHS, "lucidrains", dataclasses.replace(odd, gelu="none"))
    with pytest.raises(NotImplementedError, match="head_norm"):
        vitlib.loss_and_grads(params, x, y, cfg)


def test_every_arch_flag_is_known_to_the_fast_path():
    import dataclasses

    names = {f.name for f in dataclasses.fields(Arch)} - {"name"}
    assert names == set(fast.SUPPORTED) | set(fast.ANY_VALUE)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("style,pool", CASES)
def test_fast_logits_match_teaching_logits(style, pool, dtype, parts):
    """model.logits(fast=True) == the teaching forward, for every style and pool, in 1, 2 and 3 parts; batches of
    fewer, exactly and more than fast_logits' batch_size (with a remainder); x untouched; a fresh array."""
    cfg = make_cfg(style, pool)
    params, x, _ = make_inputs(cfg, dtype, N=9)
    x = x.astype(dtype)
    x0 = x.copy()
    want = vitlib.logits(params, x, cfg)
    for batch_size in (2, 4, 9, 16):
        got = fast.fast_logits(params, x, cfg, batch_size=batch_size)
        assert got.shape == want.shape and got.dtype == dtype
        assert vitlib.rel_error(got, want) < TOL[dtype]
        got[:] = np.nan  # the result is the caller's: writing to it changes nothing the next call reads
        assert vitlib.rel_error(fast.fast_logits(params, x, cfg, batch_size=batch_size), want) < TOL[dtype]
    assert vitlib.rel_error(vitlib.logits(params, x, cfg, fast=True), want) < TOL[dtype]
    np.testing.assert_array_equal(x, x0)
    # the logits of a wrong model are caught: another image's logits are far from these
    assert vitlib.rel_error(fast.fast_logits(params, x[::-1].copy(), cfg), want) > 1e3 * TOL[dtype]


# ---------------------------------------------------------------- the parts in worker processes


def test_worker_processes_are_bit_for_bit_the_threads(parts):
    """Parts 1.. in worker processes return exactly what their threads return: loss, every gradient, logits,
    label smoothing included; the workers end with the with-block."""
    inputs = {}
    for style, pool in CASES[::3]:
        cfg = make_cfg(style, pool)
        for dtype in (np.float64, np.float32):
            params, x, y = make_inputs(cfg, dtype, N=7)
            x = x.astype(dtype)
            threads = [fast.fast_loss_and_grads(params, x, y, cfg, s) for s in (0.0, 0.1)]
            inputs[style, pool, dtype] = (cfg, params, x, y, threads, fast.fast_logits(params, x, cfg))
    with fast.worker_processes():
        workers = list(fast._POOL["workers"])
        assert len(workers) == parts - 1
        for cfg, params, x, y, threads, logits in inputs.values():
            for s, (loss0, g0) in zip((0.0, 0.1), threads):
                loss1, g1 = fast.fast_loss_and_grads(params, x, y, cfg, s)
                assert loss1 == loss0
                assert all(np.array_equal(g1[k], g0[k]) for k in g0)
            assert np.array_equal(fast.fast_logits(params, x, cfg), logits)
    assert "workers" not in fast._POOL
    for w in workers:
        assert w.proc.poll() == 0  # each ended by itself when its pipe closed


def test_a_dead_worker_is_an_error_not_a_hang(parts):
    if parts == 1:
        pytest.skip("no worker with one part")
    cfg = make_cfg("lucidrains")
    params, x, y = make_inputs(cfg, np.float64)
    with fast.worker_processes():
        fast.fast_loss_and_grads(params, x, y, cfg)
        victim = fast._POOL["workers"][0].proc
        victim.kill()
        victim.wait()
        with pytest.raises(RuntimeError, match=f"worker process {victim.pid} exited"):
            fast.fast_loss_and_grads(params, x, y, cfg)
    loss, _ = fast.fast_loss_and_grads(params, x, y, cfg)  # after the block: threads again
    assert np.isfinite(loss)


def test_workers_end_when_their_parent_is_killed(parts, tmp_path):
    """kill -9 of the training process leaves no worker behind: each reads EOF on its pipe and returns."""
    import signal
    import subprocess
    import sys
    import time

    if parts == 1:
        pytest.skip("no worker with one part")
    script = tmp_path / "parent.py"
    script.write_text(
        "import time\nfrom vitlib import fast\nfast.THREADS = 2\n"
        "with fast.worker_processes():\n"
        "    print(fast._POOL['workers'][0].proc.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(worker, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{worker}") or open(f"/proc/{worker}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} outlived its parent by 20 s")
