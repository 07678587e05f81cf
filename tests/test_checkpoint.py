"""Checkpoints: exact round trip, atomic writes, and a clear ValueError for anything foreign or damaged."""

import json
import os

import numpy as np
import pytest

import vitlib
from vitlib.checkpoint import load_training_state
from vitlib.train import init_optimizer

CFG = vitlib.ViTConfig(
    image_size=8, patch_size=2, num_classes=10, dim=16, depth=1, heads=2, mlp_dim=32, channels=1, dim_head=8
)


def _members(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "checkpoint.npz"
    vitlib.save_checkpoint(path, vitlib.init_params(CFG, seed=0), CFG)
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roundtrip_exact(tmp_path, dtype):
    params = vitlib.init_params(CFG, seed=3, dtype=dtype)
    path = tmp_path / "c.npz"
    vitlib.save_checkpoint(path, params, CFG)
    loaded, cfg = vitlib.load_checkpoint(path)
    assert cfg == CFG
    assert loaded.keys() == params.keys()
    for k in params:
        assert loaded[k].dtype == params[k].dtype
        np.testing.assert_array_equal(loaded[k], params[k])


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adamw"])
def test_training_state_roundtrip(tmp_path, optimizer):
    params = vitlib.init_params(CFG, seed=1)
    x = np.random.default_rng(0).random((4, 1, 8, 8))
    _, grads = vitlib.loss_and_grads(params, x, np.arange(4), CFG)
    state = init_optimizer(optimizer, params)
    if optimizer == "momentum":
        params, state = vitlib.momentum_step(params, grads, state, lr=0.1)
    elif optimizer == "adamw":
        params, state = vitlib.adamw_step(params, grads, state, lr=0.1)
    rng = np.random.default_rng([5, 2])
    rng.random(7)
    history = [{"epoch": 1, "test_acc": 0.5, "grad_norm": {"head": 1.5}}]
    path = tmp_path / "c.npz"
    vitlib.save_checkpoint(
        path, params, CFG, opt_state=state, epoch=3, rng_state=rng.bit_generator.state, history=history,
        recipe={"lr": 0.1},
    )  # fmt: skip
    s = load_training_state(path)
    assert s["epoch"] == 3 and s["history"] == history and s["recipe"] == {"lr": 0.1}
    assert s["rng_state"] == rng.bit_generator.state
    fresh = np.random.default_rng()
    fresh.bit_generator.state = s["rng_state"]
    assert fresh.random() == rng.random()
    assert s["opt_state"].keys() == state.keys()
    for key, value in state.items():
        if isinstance(value, dict):
            assert s["opt_state"][key].keys() == value.keys()
            for k in value:
                np.testing.assert_array_equal(s["opt_state"][key][k], value[k])
        else:
            assert s["opt_state"][key] == value


def test_no_temporary_files_left(tmp_path):
    params = vitlib.init_params(CFG, seed=0)
    for _ in range(3):
        vitlib.save_checkpoint(tmp_path / "checkpoint.npz", params, CFG)
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_failed_write_keeps_the_old_file(tmp_path, ckpt):
    before = ckpt.read_bytes()
    bad = vitlib.init_params(CFG, seed=1)
    bad["pos"] = object()  # cannot be saved without pickling
    with pytest.raises((ValueError, TypeError)):
        vitlib.save_checkpoint(ckpt, bad, CFG)
    assert ckpt.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        vitlib.load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, -1])
def test_truncated(tmp_path, ckpt, keep):
    data = ckpt.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    ckpt.write_bytes(data[:n])
    with pytest.raises(ValueError, match="not a vitlib checkpoint|truncated"):
        vitlib.load_checkpoint(ckpt)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="not a vitlib checkpoint"):
        vitlib.load_checkpoint(path)


def test_corrupted_member(tmp_path, ckpt):
    data = bytearray(ckpt.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # zero a stretch inside some array's bytes or zip headers
    ckpt.write_bytes(bytes(data))
    try:
        params, cfg = vitlib.load_checkpoint(ckpt)  # zip stores no compression: raw bytes may still parse
    except ValueError:
        return
    assert cfg == CFG and params.keys() == vitlib.init_params(CFG).keys()


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.arange(10.0))
    with pytest.raises(ValueError, match="format"):
        vitlib.load_checkpoint(path)


def test_single_npy(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.arange(3.0))
    with pytest.raises(ValueError, match="not a vitlib checkpoint"):
        vitlib.load_checkpoint(path)


def test_missing_parameter(tmp_path, ckpt):
    m = _members(ckpt)
    del m["param/blocks.0.W_q"]
    np.savez(ckpt, **m)
    with pytest.raises(ValueError, match=r"missing \['blocks.0.W_q'\]"):
        vitlib.load_checkpoint(ckpt)


def test_wrong_shape(tmp_path, ckpt):
    m = _members(ckpt)
    m["param/W_head"] = np.zeros((3, 3), np.float32)
    np.savez(ckpt, **m)
    with pytest.raises(ValueError, match="W_head.*shape"):
        vitlib.load_checkpoint(ckpt)


@pytest.mark.parametrize("name", ["config", "meta", "format"])
def test_missing_key(tmp_path, ckpt, name):
    m = _members(ckpt)
    del m[name]
    np.savez(ckpt, **m)
    with pytest.raises(ValueError, match=name):
        vitlib.load_checkpoint(ckpt)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ('{"dim": 16}', "bad model config"),
        (json.dumps({**CFG.to_dict(), "colour": "red"}), "bad model config"),
        (json.dumps({**CFG.to_dict(), "depth": 2}), "missing"),
    ],
)
def test_bad_config(tmp_path, ckpt, text, match):
    m = _members(ckpt)
    m["config"] = np.array(text)
    np.savez(ckpt, **m)
    with pytest.raises(ValueError, match=match):
        vitlib.load_checkpoint(ckpt)


def test_config_not_text(tmp_path, ckpt):
    m = _members(ckpt)
    m["config"] = np.arange(4)
    np.savez(ckpt, **m)
    with pytest.raises(ValueError, match="JSON text"):
        vitlib.load_checkpoint(ckpt)


def test_pickled_object_array_is_never_loaded(tmp_path, ckpt):
    m = _members(ckpt)
    m["param/W_head"] = np.array([{"evil": 1}, None], dtype=object)  # saving it needs pickle
    np.savez(ckpt, **m)
    with pytest.raises(ValueError, match="pickled"):
        vitlib.load_checkpoint(ckpt)


def test_integer_params_rejected(tmp_path, ckpt):
    m = _members(ckpt)
    m["param/pos"] = m["param/pos"].astype(np.int64)
    np.savez(ckpt, **m)
    with pytest.raises(ValueError, match="float32 or float64"):
        vitlib.load_checkpoint(ckpt)
