"""Training on Fashion-MNIST (issue 11): the recipe, the model's input, the CLI's progress and epoch lines, kill -9
and --resume, and `evaluate` with the class names. On a stand-in of the official files' sizes (conftest's
fake_fashion_dir, passed as VITLIB_FASHION_MNIST_DIR), so it runs without Debian's package; the real files are
used where they are installed (last test)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vitlib
from vitlib.arch import ARCHS, STYLES
from vitlib.checkpoint import load_training_state
from vitlib.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_INSTALL, load_fashion_mnist
from vitlib.train import ADDED_FIELDS, DEFAULTS, Recipe, blas_threads, model_input, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, patch_size=7, train_size=256, test_size=200,
            batch_size=64)  # fmt: skip
TINY_FLAGS = [f for k, v in TINY.items() for f in ("--" + k.replace("_", "-"), str(v))]


def cli(folder, *args, check=True, timeout=300):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "VITLIB_FASHION_MNIST_DIR": str(folder)}
    proc = subprocess.run(
        [sys.executable, "-m", "vitlib", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def mirrored_argmax(params, x, cfg):
    """The recipe's prediction, written out from vitlib.logits (not vitlib.train.predict, which it checks)."""
    return (vitlib.logits(params, x, cfg) + vitlib.logits(params, x[..., ::-1], cfg)).argmax(-1)


# ---------------------------------------------------------------- the recipe


def test_fashion_defaults_and_digits_defaults_unchanged():
    r = Recipe(dataset="fashion-mnist")
    for k, v in DEFAULTS["fashion-mnist"].items():
        assert getattr(r, k) == v, k
    assert r.model_config().image_size == (28, 28) and r.model_config().num_patches == 16
    d = Recipe()  # the digits recipe of the book's chapter 11, as before issue 11
    assert (d.depth, d.epochs, d.batch_size, d.lr, d.shift, d.shift_prob, d.flip_prob, d.standardize) == (
        2, 30, 32, 3e-3, 1, 0.5, 0.0, False,
    )  # fmt: skip
    assert d.model_config().image_size == (8, 8)
    assert (d.label_smoothing, r.label_smoothing) == (0.0, 0.1)  # digits' loss is the plain cross-entropy
    assert (d.tta_flip, r.tta_flip) == (False, True)  # a mirrored 3 is no 3; a mirrored shirt is a shirt
    assert Recipe(dataset="fashion-mnist", epochs=3, flip_prob=0.0).epochs == 3  # a given value wins


@pytest.mark.parametrize(
    "kwargs, error, phrase",
    [
        (dict(dataset="mnist"), ValueError, "dataset must be one of ('digits', 'fashion-mnist'), got 'mnist'"),
        (dict(dataset="fashion-mnist", patch_size=5), ValueError, "one of [1, 2, 4, 7, 14, 28], got 5"),
        (dict(patch_size=3), ValueError, "8x8 images of digits: one of [1, 2, 4, 8], got 3"),
        (dict(standardize=True), ValueError, "needs dataset 'fashion-mnist', got 'digits'"),
        (dict(dataset="fashion-mnist", standardize="yes"), TypeError, "standardize must be True or False"),
        (dict(dataset="fashion-mnist", flip_prob=1.5), ValueError, "flip_prob"),
        (dict(dataset="fashion-mnist", tta_flip="no"), TypeError, "tta_flip must be True or False, got 'no'"),
        (dict(tta_flip=1), TypeError, "tta_flip must be True or False, got 1"),
        (dict(dataset="fashion-mnist", train_size=60001), ValueError, "train_size"),
        (dict(dataset="fashion-mnist", test_size=0), ValueError, "test_size"),
        (dict(dataset="fashion-mnist", shift=28), ValueError, "shift"),
        (dict(dataset="fashion-mnist", label_smoothing=1.0), ValueError, "label_smoothing must be a finite number in"),
        (dict(label_smoothing="0.1"), TypeError, "label_smoothing must be a real number, got str"),
        (dict(style="timm"), ValueError, "style must be one of ('seed', 'lucidrains', 'vit-pytorch', 'hf'), got 'tim"),
        (
            dict(style="seed", mlp_dim=64, pool="mean"),
            ValueError,
            "style 'seed' pools by ('cls',): pool must be one of them, got 'mean'",
        ),
    ],
)
def test_bad_recipes_are_refused(kwargs, error, phrase):
    with pytest.raises(error, match=None) as info:
        Recipe(**kwargs)
    assert phrase in str(info.value)


def test_a_recipe_stored_before_the_new_fields_resumes_as_it_was_trained():
    old = Recipe().to_dict()
    for k in ADDED_FIELDS:
        del old[k]
    r = Recipe.from_dict(old)
    assert (r.style, r.pool, r.flip_prob, r.standardize, r.test_size) == ("lucidrains", "cls", 0.0, False, None)
    old_fashion = {k: v for k, v in Recipe(dataset="fashion-mnist").to_dict().items() if k != "label_smoothing"}
    assert Recipe.from_dict(old_fashion).label_smoothing == 0.0  # trained before label smoothing: resumed without
    old_fashion = {k: v for k, v in Recipe(dataset="fashion-mnist").to_dict().items() if k != "tta_flip"}
    assert Recipe.from_dict(old_fashion).tta_flip is False  # its test accuracies were measured without the mirror
    with pytest.raises(ValueError, match="missing"):  # any other field missing is still refused
        Recipe.from_dict({k: v for k, v in old.items() if k != "lr"})


@pytest.mark.parametrize("style", STYLES)
def test_the_style_is_the_models_architecture(style, fake_fashion_dir, monkeypatch, tmp_path):
    """Recipe.style picks the architecture (a row of vitlib.arch.ARCHS): the model, its parameters and the
    checkpoint's recipe all follow it."""
    monkeypatch.setenv("VITLIB_FASHION_MNIST_DIR", str(fake_fashion_dir))
    sizes = {**TINY, "train_size": 64, "test_size": 32}
    if style == "seed":  # the exercise's blocks are square: mlp_dim = dim (dim_head = dim / heads already)
        sizes["mlp_dim"] = sizes["dim"]
    r = Recipe(dataset="fashion-mnist", style=style, epochs=1, **sizes)
    cfg = r.model_config()
    assert cfg.style == style and cfg.arch == ARCHS[style]
    out = train(r, seed=0, out_dir=str(tmp_path), progress=False)
    params, history = out["params"], out["history"]
    assert set(params) == set(vitlib.param_shapes(cfg))
    assert ("ln_patch_in.gamma" in params) == ARCHS[style].patch_norms
    assert Recipe.from_dict(load_training_state(str(tmp_path / "checkpoint.npz"))["recipe"]["recipe"]).style == style
    assert np.isfinite(history[-1]["train_loss"])


def test_model_input():
    pixels = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    kept = pixels.copy()
    r = Recipe(dataset="fashion-mnist")
    x = model_input(r, pixels)
    assert x.dtype == np.float32 and x.shape == pixels.shape
    np.testing.assert_allclose(x, (pixels / 255.0 - 0.2860) / 0.3530, rtol=1e-6)
    raw = model_input(dataclasses.replace(r, standardize=False), pixels)
    np.testing.assert_allclose(raw, pixels / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(pixels, kept)
    np.testing.assert_allclose(model_input(Recipe(), np.array([0, 8, 16])), [0, 0.5, 1])


# ---------------------------------------------------------------- the CLI on the stand-in


@pytest.fixture(scope="module")
def short_run(fake_fashion_dir, tmp_path_factory):
    """`python -m vitlib train --dataset fashion-mnist` with its progress bar, 2 epochs of a tiny model."""
    out = tmp_path_factory.mktemp("run") / "f"
    proc = cli(fake_fashion_dir, "train", "--dataset", "fashion-mnist", "--out", str(out), "--epochs", "2",
               *TINY_FLAGS)  # fmt: skip
    return out, proc


def test_progress_bar_and_one_line_per_epoch(short_run):
    _, proc = short_run
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2, proc.stdout
    for e, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {e}/2: train loss ") and "test accuracy" in line and "(200 images)" in line
        assert line.endswith(" s")
    bar = proc.stderr.replace("\r", "\n")
    for part in ("epoch 1/2", "epoch 2/2", "img/s", "loss ", "step/s", "<"):  # "<" separates elapsed from the ETA
        assert part in bar, (part, bar[-500:])
    assert "8/8" in bar  # 2 epochs of 4 steps: the bar counts steps


def test_checkpoint_holds_the_recipe_and_logits_take_model_input(short_run, fake_fashion_dir):
    out, _ = short_run
    state = load_training_state(out / "checkpoint.npz")
    recipe = Recipe.from_dict(state["recipe"]["recipe"])
    assert recipe.dataset == "fashion-mnist" and recipe.standardize is True
    _, _, x_raw, y = load_fashion_mnist(fake_fashion_dir)
    assert recipe.tta_flip is True  # the test accuracy is of the image and its mirror image
    x = model_input(recipe, x_raw[:200])
    acc = float((mirrored_argmax(state["params"], x, state["cfg"]) == y[:200]).mean())
    assert acc == state["history"][-1]["test_acc"]
    # the raw pixels / 255 are not the input this model was trained on: its accuracy differs
    wrong = model_input(dataclasses.replace(recipe, standardize=False), x_raw[:200])
    assert (vitlib.logits(state["params"], wrong, state["cfg"]).argmax(-1) == y[:200]).mean() != acc
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["step_time"] <= h["time"] for h in history)


def test_evaluate_names_the_classes(short_run, fake_fashion_dir):
    out, _ = short_run
    proc = cli(fake_fashion_dir, "evaluate", str(out / "checkpoint.npz"))
    text = proc.stdout
    assert "fashion-mnist, 10000 test images (input: pixels / max, standardised)" in text
    assert "prediction: the argmax of the logits of each image plus those of its mirror image (tta_flip)" in text
    state = load_training_state(out / "checkpoint.npz")
    _, _, x_raw, y = load_fashion_mnist(fake_fashion_dir)
    recipe = Recipe.from_dict(state["recipe"]["recipe"])
    x = model_input(recipe, x_raw)
    pred = mirrored_argmax(state["params"], x, state["cfg"])
    assert f"test accuracy: {(pred == y).mean():.4f} ({(pred == y).sum()}/10000)" in text
    lines = text.splitlines()
    per_class = lines[lines.index("per-class accuracy:") + 1 :][:10]
    for k, (name, line) in enumerate(zip(FASHION_MNIST_CLASSES, per_class)):
        right, n_k = int(((pred == k) & (y == k)).sum()), int((y == k).sum())
        assert line.split()[:2] == [str(k), name.split()[0]] and line.endswith(f"({right}/{n_k})"), line
    start = next(i for i, ln in enumerate(lines) if ln.startswith("confusion matrix"))
    rows = lines[start + 2 : start + 12]
    C = np.array([[int(v) for v in row.split()[-10:]] for row in rows])
    assert C.sum() == 10000 and C.trace() == (pred == y).sum()
    assert [row.split()[1] for row in rows] == [n.split()[0] for n in FASHION_MNIST_CLASSES]
    np.testing.assert_array_equal(C.sum(axis=1), np.bincount(y, minlength=10))


def test_kill_9_then_resume_gives_identical_weights(fake_fashion_dir, tmp_path):
    """As for digits (tests/test_train.py): SIGKILL after the first checkpoint, --resume, the weights of an
    uninterrupted run, bit for bit."""
    epochs = 12
    out = tmp_path / "killed"
    args = ["train", "--dataset", "fashion-mnist", "--seed", "2", "--out", str(out), "--epochs", str(epochs),
            "--no-progress", *TINY_FLAGS]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "VITLIB_FASHION_MNIST_DIR": str(fake_fashion_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "vitlib", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    ckpt = out / "checkpoint.npz"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.05)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert still_running, "the run ended before it could be killed; make it longer"
    assert 1 <= load_training_state(ckpt)["epoch"] < epochs
    cli(fake_fashion_dir, *args[:10], "--resume")  # the flags may be omitted: the checkpoint holds the recipe
    resumed = load_training_state(ckpt)
    assert resumed["epoch"] == epochs
    old = os.environ.get("VITLIB_FASHION_MNIST_DIR")
    os.environ["VITLIB_FASHION_MNIST_DIR"] = str(fake_fashion_dir)
    try:
        with blas_threads(1):
            reference = train(Recipe(dataset="fashion-mnist", epochs=epochs, **TINY), seed=2, progress=False)
    finally:
        if old is None:
            del os.environ["VITLIB_FASHION_MNIST_DIR"]
        else:
            os.environ["VITLIB_FASHION_MNIST_DIR"] = old
    for k, v in reference["params"].items():
        np.testing.assert_array_equal(resumed["params"][k], v, err_msg=k)
    assert [h["test_acc"] for h in resumed["history"]] == [h["test_acc"] for h in reference["history"]]


def test_missing_data_is_one_error_line_with_the_install_command(tmp_path):
    proc = cli(tmp_path / "absent", "train", "--dataset", "fashion-mnist", "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: Fashion-MNIST not found") and FASHION_MNIST_INSTALL in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--standardize"], "--standardize uses Fashion-MNIST's mean and std"),
        (["--dataset", "fashion-mnist", "--patch-size", "5"], "--patch-size must divide the 28x28 images"),
        (["--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["--dataset", "fashion-mnist", "--label-smoothing", "1"], "--label-smoothing must be a finite number in"),
    ],
)
def test_bad_flags_are_one_error_line(flags, phrase, tmp_path, fake_fashion_dir):
    proc = cli(fake_fashion_dir, "train", "--out", str(tmp_path / "o"), *flags, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert phrase in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith(("error:", "python -m vitlib"))


# ---------------------------------------------------------------- the real files, where installed


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason=f"{FASHION_MNIST_DIR} absent (make data)")
def test_a_short_run_on_the_real_files(tmp_path):
    proc = cli(FASHION_MNIST_DIR, "train", "--dataset", "fashion-mnist", "--out", str(tmp_path / "r"), "--epochs",
               "1", "--no-progress", *TINY_FLAGS)  # fmt: skip
    assert "epoch 1/1: train loss" in proc.stdout
    text = cli(FASHION_MNIST_DIR, "evaluate", str(tmp_path / "r" / "checkpoint.npz")).stdout
    for name in FASHION_MNIST_CLASSES:
        assert name in text
    acc = float(text.split("test accuracy: ")[1].split()[0])
    assert 0.2 < acc < 1.0  # 256 images and one epoch: better than chance, far from done


def test_bench_train_sides_train_the_same_model(fake_fashion_dir, tmp_path):
    """benchmarks/bench_train.py: vitlib and torch, each in its own process, on the same recipe (here its first
    epoch on 512 images): the same batches from the same weights give the same losses, up to float32 rounding."""
    save = tmp_path / "bench.json"
    env = {**os.environ, "VITLIB_FASHION_MNIST_DIR": str(fake_fashion_dir)}
    cmd = [sys.executable, "benchmarks/bench_train.py", "--epochs", "2", "--train-size", "512", "--test-size", "300",
           "--save", str(save)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(save.read_text())
    v, t = doc["sides"]["vitlib"]["history"], doc["sides"]["torch"]["history"]
    assert [h["epoch"] for h in v] == [h["epoch"] for h in t] == [1, 2]
    for hv, ht in zip(v, t):
        assert abs(hv["train_loss"] - ht["train_loss"]) < 1e-3 * ht["train_loss"]
        assert abs(hv["test_acc"] - ht["test_acc"]) <= 2 / 300  # at most two test images decided otherwise
    assert "| epoch | vitlib test acc" in proc.stdout


def test_fashion_ablation_runs_each_variant(fake_fashion_dir, tmp_path):
    """benchmarks/fashion_ablation.py: each variant trains (its own process), stops after --epochs epochs of the
    recipe's schedule, and its row says what it changed."""
    save = tmp_path / "ablation.json"
    env = {**os.environ, "VITLIB_FASHION_MNIST_DIR": str(fake_fashion_dir)}
    cmd = [sys.executable, "benchmarks/fashion_ablation.py", "--epochs", "1", "--train-size", "256", "--test-size",
           "100", "--variants", "recipe,shift2", "--save", str(save)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(save.read_text())
    assert set(doc["results"]) == {"recipe", "shift2"}
    assert all([h["epoch"] for h in hist] == [1] for hist in doc["results"].values())
    assert "| shift2 | shift=2, shift_prob=1.0 |" in proc.stdout
    bad = subprocess.run([*cmd[:2], "--variants", "nope"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown variants ['nope']" in bad.stderr


def test_fashion_ablation_full_trains_each_schedule_to_its_end(fake_fashion_dir, tmp_path):
    """--full: every variant runs its own whole schedule (the recipe's epochs, patch-4's 7), whatever --epochs says;
    the table's rows are as long as their runs, and --epochs 0 is refused with one usage line."""
    save = tmp_path / "full.json"
    env = {**os.environ, "VITLIB_FASHION_MNIST_DIR": str(fake_fashion_dir)}
    cmd = [sys.executable, "benchmarks/fashion_ablation.py", "--full", "--epochs", "1", "--train-size", "128",
           "--test-size", "50", "--variants", "recipe,patch-4", "--save", str(save)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(save.read_text())["results"]
    assert [h["epoch"] for h in results["recipe"]] == list(range(1, DEFAULTS["fashion-mnist"]["epochs"] + 1))
    assert [h["epoch"] for h in results["patch-4"]] == list(range(1, 8))
    assert all(h["time"] > 0 for hist in results.values() for h in hist)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| patch-4 |"))
    assert row.startswith("| patch-4 | patch_size=4, depth=4, epochs=7 |")
    assert row.count("|") == DEFAULTS["fashion-mnist"]["epochs"] + 4  # name, change, 14 epochs, s per epoch
    bad = subprocess.run([*cmd[:2], "--epochs", "0"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--epochs must be at least 1, got 0" in bad.stderr


def test_fashion_tta_ema_rows(fake_fashion_dir, tmp_path):
    """benchmarks/fashion_tta_ema.py: one row per epoch from --from-epoch on, the raw accuracy the run's own (the run
    trains without the mirror), every prediction an accuracy on the test images."""
    save = tmp_path / "tta.json"
    env = {**os.environ, "VITLIB_FASHION_MNIST_DIR": str(fake_fashion_dir)}
    cmd = [sys.executable, "benchmarks/fashion_tta_ema.py", "--epochs", "2", "--train-size", "128", "--test-size",
           "50", "--from-epoch", "1", "--decays", "0.9,0.99", "--seed", "3", "--save", str(save)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(save.read_text())
    assert doc["seed"] == 3 and doc["recipe"]["tta_flip"] is False
    rows = doc["rows"]
    assert [r["epoch"] for r in rows] == [1, 2]
    keys = {"epoch", "raw", "raw_tta", "ema0.9", "ema0.9_tta", "ema0.99", "ema0.99_tta"}
    assert all(set(r) == keys and all(abs(r[k] * 50 - round(r[k] * 50)) < 1e-9 for k in keys - {"epoch"}) for r in rows)
    assert f"the run's own (raw) test accuracy {rows[-1]['raw']:.4f}" in proc.stdout


def test_no_tta_flip_predicts_from_the_image_alone(fake_fashion_dir, tmp_path):
    """--no-tta-flip: the checkpoint's recipe says so, the epoch's test accuracy is the plain argmax's, and evaluate
    says which prediction it used."""
    out = tmp_path / "plain"
    cli(fake_fashion_dir, "train", "--dataset", "fashion-mnist", "--out", str(out), "--epochs", "1", "--no-progress",
        "--no-tta-flip", *TINY_FLAGS)  # fmt: skip
    state = load_training_state(out / "checkpoint.npz")
    recipe = Recipe.from_dict(state["recipe"]["recipe"])
    assert recipe.tta_flip is False
    _, _, x_raw, y = load_fashion_mnist(fake_fashion_dir)
    x = model_input(recipe, x_raw[:200])
    z = vitlib.logits(state["params"], x, state["cfg"])
    assert state["history"][-1]["test_acc"] == float((z.argmax(-1) == y[:200]).mean())
    text = cli(fake_fashion_dir, "evaluate", str(out / "checkpoint.npz")).stdout
    assert "prediction: the argmax of the logits\n" in text and "mirror" not in text
    help_text = " ".join(cli(fake_fashion_dir, "train", "--help").stdout.split())  # argparse wraps its lines
    assert "--tta-flip, --no-tta-flip" in help_text and "default False (digits), True (fashion-mnist)" in help_text
