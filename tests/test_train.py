"""Training on digits: the step function, the CLI, kill -9 in the middle of a run, and --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vitlib
from vitlib.checkpoint import load_training_state
from vitlib.train import (
    Recipe,
    blas_threads,
    cls_attention_map,
    layer_grad_norms,
    lr_at,
    predict,
    train,
    train_step,
)

TINY = dict(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, patch_size=2, train_size=128, batch_size=64)
TINY_FLAGS = ["--dim", "16", "--depth", "1", "--heads", "2", "--dim-head", "8", "--mlp-dim", "32",
              "--patch-size", "2", "--train-size", "128", "--batch-size", "64"]  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, check=True):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vitlib", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_train_step_is_pure_and_matches_the_optimizers():
    cfg = Recipe(**TINY).model_config()
    params = vitlib.init_params(cfg, seed=0, dtype=np.float64)
    before = {k: v.copy() for k, v in params.items()}
    x, y = np.random.default_rng(0).random((8, 1, 8, 8)), np.arange(8)
    loss, grads = vitlib.loss_and_grads(params, x, y, cfg)
    state = vitlib.adamw_init(params)
    l2, new, new_state, g2 = train_step(params, state, x, y, cfg, lr=0.01, optimizer="adamw")
    assert l2 == loss
    for k in params:
        np.testing.assert_array_equal(g2[k], grads[k])
        np.testing.assert_array_equal(params[k], before[k])  # nothing in place
    no_decay = [k for k in params if not k.split(".")[-1].startswith("W_")]
    ref, _ = vitlib.adamw_step(params, grads, state, lr=0.01, weight_decay=0.0, no_decay=no_decay)
    for k in params:
        np.testing.assert_array_equal(new[k], ref[k])
    _, new, _, _ = train_step(params, {"step": 0}, x, y, cfg, lr=0.5)
    ref = vitlib.sgd_step(params, grads, 0.5)
    assert all(np.array_equal(new[k], ref[k]) for k in params)


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 1e-3


@pytest.mark.parametrize("fast", [True, False])
def test_predict_with_the_mirror_image(fast):
    """predict(..., tta_flip=True) is the argmax of logits(x) + logits(x mirrored left-right), on both paths: an image
    and its mirror image get the same class. Without it they need not; and mirroring top-bottom (the wrong axis) or
    averaging nothing would not give that invariance, so the test can tell them apart."""
    cfg = Recipe(dataset="fashion-mnist", dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32).model_config()
    params = vitlib.init_params(cfg, seed=1, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((300, 1, 28, 28))
    kept = x.copy()
    z, z_lr, z_ud = (vitlib.logits(params, v, cfg) for v in (x, x[..., ::-1], x[..., ::-1, :]))
    pred = predict(params, x, cfg, fast=fast, tta_flip=True, batch_size=128)
    np.testing.assert_array_equal(pred, (z + z_lr).argmax(-1))
    np.testing.assert_array_equal(x, kept)  # the input is not mirrored in place
    np.testing.assert_array_equal(predict(params, x[..., ::-1], cfg, fast=fast, tta_flip=True), pred)
    plain = predict(params, x, cfg, fast=fast)
    np.testing.assert_array_equal(plain, z.argmax(-1))
    # the wrong answers this test must catch: no averaging, or the top-bottom mirror
    assert (plain != predict(params, x[..., ::-1], cfg, fast=fast)).any()
    assert ((z + z_ud).argmax(-1) != pred).any()
    with pytest.raises(TypeError, match="tta_flip must be True or False, got 'yes'"):
        predict(params, x, cfg, tta_flip="yes")


def test_attention_map_and_grad_norms():
    cfg = Recipe(**TINY).model_config()
    params = vitlib.init_params(cfg, seed=0)
    x = np.random.default_rng(0).random((3, 1, 8, 8))
    m = cls_attention_map(params, x, cfg)
    assert m.shape == (3, 4, 4) and (m > 0).all() and (m.sum(axis=(1, 2)) < 1).all()
    _, grads = vitlib.loss_and_grads(params, x, np.arange(3), cfg)
    norms = layer_grad_norms(grads, cfg)
    assert list(norms) == ["embed", "block 0", "head"]
    total = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert np.sqrt(sum(v**2 for v in norms.values())) == pytest.approx(total, rel=1e-6)


def test_cli_short_run_and_evaluate(tmp_path):
    out = tmp_path / "run"
    proc = cli("train", "--dataset", "digits", "--seed", "1", "--out", str(out), "--epochs", "2", *TINY_FLAGS)
    assert "test accuracy" in proc.stdout and "time" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["recipe"]["epochs"] == 2
    hist = metrics["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert {"train_loss", "train_acc", "test_acc", "lr", "time", "grad_norm"} <= h.keys()
        assert np.isfinite(h["train_loss"]) and 0 <= h["test_acc"] <= 1
    params, cfg = vitlib.load_checkpoint(out / "checkpoint.npz")
    assert cfg.dim == 16 and cfg.style == "lucidrains"
    assert sorted(os.listdir(out)) == [".vitlib-run.lock", "checkpoint.npz", "metrics.json"]  # no temporaries left
    ev = cli("evaluate", str(out / "checkpoint.npz"))
    assert f"test accuracy: {hist[-1]['test_acc']:.4f}" in ev.stdout
    assert "confusion matrix" in ev.stdout
    rows = [line.split() for line in ev.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    counts = np.array([[int(v) for v in r[1:]] for r in rows[-10:]])  # a digit's row: its index, then 10 counts
    assert counts.shape == (10, 10) and counts.sum() == 360
    # an existing run is not overwritten; flags that contradict the checkpoint are refused on --resume
    again = cli("train", "--out", str(out), *TINY_FLAGS, check=False)
    assert again.returncode != 0 and "--resume" in again.stderr
    clash = cli("train", "--out", str(out), "--resume", "--dim", "32", check=False)
    assert clash.returncode != 0 and "--dim 32" in clash.stderr


def test_evaluate_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage" * 100)
    proc = cli("evaluate", str(bad), check=False)
    assert proc.returncode != 0 and "not a vitlib checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_kill_9_then_resume_gives_identical_weights(tmp_path):
    """SIGKILL a run right after its first checkpoint; the checkpoint loads; --resume finishes the run
    with exactly the weights of an uninterrupted run of the same seed."""
    epochs = 40
    out = tmp_path / "killed"
    args = ["train", "--seed", "3", "--out", str(out), "--epochs", str(epochs), "--no-progress", *TINY_FLAGS]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vitlib", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    ckpt = out / "checkpoint.npz"
    deadline = time.monotonic() + 60
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.02)  # land somewhere in a later epoch, maybe in the middle of writing a checkpoint
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert still_running, "the run ended before it could be killed; make it longer"
    state = load_training_state(ckpt)  # whatever moment the kill hit, the file is whole
    assert 1 <= state["epoch"] < epochs
    if (out / "metrics.json").exists():  # written just after the checkpoint: the kill may come in between
        json.loads((out / "metrics.json").read_text())
    kept = (".vitlib-run.lock", "checkpoint.npz", "metrics.json")
    assert not [f for f in os.listdir(out) if f not in kept and not f.endswith(".tmp")]
    cli(*args[: -len(TINY_FLAGS)], "--resume")  # flags may be omitted: the checkpoint holds the recipe
    resumed = load_training_state(ckpt)
    assert resumed["epoch"] == epochs and len(resumed["history"]) == epochs
    assert sorted(os.listdir(out)) == list(kept)  # stale temporaries cleaned up
    with blas_threads(1):  # as the CLI ran (OPENBLAS_NUM_THREADS=1): the fast step cuts the batch by BLAS's threads
        reference = train(Recipe(epochs=epochs, **TINY), seed=3, progress=False)
    for k, v in reference["params"].items():
        np.testing.assert_array_equal(resumed["params"][k], v, err_msg=k)
    assert resumed["history"][-1]["test_acc"] == reference["test_acc"]


def test_resume_in_process_equals_uninterrupted(tmp_path):
    recipe = Recipe(epochs=3, optimizer="momentum", lr=0.05, **TINY)
    full = train(recipe, seed=5, progress=False)

    def stop_after_first_epoch(info):
        if info["epoch"] == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train(recipe, seed=5, out_dir=part, progress=False, callback=stop_after_first_epoch)
    state = load_training_state(part / "checkpoint.npz")
    assert state["epoch"] == 1
    resumed = train(out_dir=part, resume=True, progress=False)
    assert resumed["recipe"] == recipe and resumed["seed"] == 5
    for k, v in full["params"].items():
        np.testing.assert_array_equal(resumed["params"][k], v, err_msg=k)
