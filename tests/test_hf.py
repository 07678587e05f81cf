"""The "hf" architecture: transformers' ViTForImageClassification, loaded from a save_pretrained folder and
differentiated by hand, against transformers' own autograd.

Nothing is fetched from a hub: every model here is built at random by transformers and saved into tmp_path.
(test_vs_torch.py also runs "hf" through its hypothesis configs: it iterates over vitlib.arch.ARCHS.)
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_grads_match, exactly_zero, random_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vitlib
from vit_oracles import hf_from_cfg, randomize_module, torch_loss_and_grads
from vitlib.interop import from_hf, hf_config, load_hf, to_hf

pytest.importorskip("transformers")


def hf_cfg(**kw):
    """Distinct widths everywhere: F = 12, D = 10, H * Dh = 2 * 4 = 8, M = 14, K = 5, T = 13."""
    sizes = dict(image_size=(8, 6), patch_size=2, num_classes=5, dim=10, depth=2, heads=2, mlp_dim=14, channels=3)
    return vitlib.ViTConfig(**{**sizes, "dim_head": 4, **kw}, style="hf")


def saved_model(tmp_path, cfg, seed=0, dtype=torch.float64):
    """A random transformers ViT with random LayerNorms and biases, saved into tmp_path -> (model, folder)."""
    torch.manual_seed(seed)
    # initializer_range 0.3, not transformers' 0.02: attention scores of order one, so no gradient is tiny
    model = randomize_module(hf_from_cfg(cfg, initializer_range=0.3), seed=seed).to(dtype)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_load_hf_reads_config_and_weights_exactly(tmp_path):
    cfg = hf_cfg()
    model, folder = saved_model(tmp_path, cfg)
    params, loaded_cfg = load_hf(folder)
    assert loaded_cfg == cfg
    assert list(params) == list(vitlib.param_shapes(cfg))
    assert all(v.dtype == np.float64 for v in params.values())
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    back = to_hf(params, cfg)  # exact inverses, both ways
    assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in state)
    again = from_hf(back, cfg)
    assert all(np.array_equal(again[k], params[k]) for k in params)
    x, _ = random_batch(cfg, n=3)
    with torch.no_grad():
        theirs = model(torch.tensor(x)).logits.numpy()
    assert vitlib.rel_error(vitlib.logits(params, x, cfg), theirs) < 1e-12


def test_conv_patch_embedding_is_a_linear_on_cpp_patches(tmp_path):
    """The Conv2d kernel (D, C, ph, pw) is W_patch (C ph pw, D) transposed: (c, p1, p2) flattening."""
    cfg = hf_cfg(patch_size=(2, 3))
    model, _ = saved_model(tmp_path, cfg)
    params = from_hf(model.state_dict(), cfg)
    x, _ = random_batch(cfg, n=2)
    with torch.no_grad():
        conv = model.vit.embeddings.patch_embeddings(torch.tensor(x)).numpy()  # (N, Np, D)
    ours = vitlib.embed.patchify(x, cfg.patch_size, "cpp") @ params["W_patch"] + params["b_patch"]
    assert vitlib.rel_error(ours, conv) < 1e-13


def loaded_step(tmp_path, seed):
    """Save a random model, load it with load_hf, and take transformers' autograd step on a batch of 4."""
    model, folder = saved_model(tmp_path, hf_cfg(), seed=seed)
    params, cfg = load_hf(folder)
    x, y = random_batch(cfg, n=4, seed=seed)
    return params, cfg, x, y, *torch_loss_and_grads(model, None, x, y)


@pytest.mark.parametrize("fast", [False, True], ids=["teaching", "fast"])
def test_gradients_equal_transformers_autograd(tmp_path, fast):
    params, cfg, x, y, ref_loss, ref = loaded_step(tmp_path, seed=1)
    loss, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)
    assert abs(loss - ref_loss) < 1e-12
    assert_grads_match(to_hf(grads, cfg), ref)
    assert_grads_match(grads, from_hf(ref, cfg))


def test_qkv_bias_gradients(tmp_path):
    """db_q = sum over batch and tokens of dQ, db_v = sum of dV; db_k = 0 in exact arithmetic (softmax is
    shift-invariant along a row), so both vitlib and autograd return round-off there, far below db_q."""
    params, cfg, x, y, _, ref = loaded_step(tmp_path, seed=2)
    _, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=False)
    for b in range(cfg.depth):
        db_q, db_k = grads[f"blocks.{b}.b_q"], grads[f"blocks.{b}.b_k"]
        torch_db_k = ref[f"vit.layers.{b}.attention.k_proj.bias"]
        assert np.abs(db_q).max() > 1e-3 * max(np.abs(g).max() for g in grads.values())  # a real gradient ...
        assert np.abs(db_k).max() < 1e-13 * np.abs(db_q).max()  # ... against round-off
        assert np.abs(torch_db_k).max() < 1e-13 * np.abs(db_q).max()
        assert exactly_zero(f"blocks.{b}.b_k")


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_random_configs_through_save_and_load(tmp_path_factory, data):
    """Random sizes (non-square widths, head_dim free, non-square patches), both paths, every tensor."""
    ph, pw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    heads = data.draw(st.integers(1, 3))
    cfg = vitlib.ViTConfig(
        image_size=(ph * data.draw(st.integers(1, 3)), pw * data.draw(st.integers(1, 3))),
        patch_size=(ph, pw),
        num_classes=data.draw(st.integers(2, 6)),
        dim=data.draw(st.integers(3, 9)),
        depth=data.draw(st.integers(1, 2)),
        heads=heads,
        dim_head=data.draw(st.integers(1, 5)),
        mlp_dim=data.draw(st.integers(1, 11)),
        channels=data.draw(st.integers(1, 3)),
        style="hf",
    )
    seed = data.draw(st.integers(0, 1000))
    model, folder = saved_model(tmp_path_factory.mktemp("hf"), cfg, seed=seed)
    params, loaded = load_hf(folder)
    assert loaded == cfg
    x, y = random_batch(cfg, n=data.draw(st.integers(1, 3)), seed=seed)
    ref_loss, ref = torch_loss_and_grads(model, None, x, y)
    for fast in (False, True):
        loss, grads = vitlib.loss_and_grads(params, x, y, cfg, fast=fast)
        assert abs(loss - ref_loss) <= 1e-12 * max(1.0, abs(ref_loss))
        assert_grads_match(grads, from_hf(ref, cfg))


def test_float32_fast_path_is_as_accurate_as_torch_float32(tmp_path):
    """Against the float64 autograd gradients, vitlib's float32 fast path errs no more than transformers
    itself does in float32 (a small factor for a different order of float32 sums)."""
    cfg = hf_cfg(dim=32, heads=4, dim_head=8, mlp_dim=48)
    model, folder = saved_model(tmp_path, cfg, seed=3)
    params64, _ = load_hf(folder)
    x, y = random_batch(cfg, n=8, seed=3)
    _, ref = torch_loss_and_grads(model, None, x, y)
    ref = from_hf(ref, cfg)
    _, t32 = torch_loss_and_grads(model, None, x, y, dtype=torch.float32)
    t32 = from_hf(t32, cfg)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    _, g32 = vitlib.loss_and_grads(params32, x.astype(np.float32), y, cfg)
    assert all(g.dtype == np.float32 for g in g32.values())
    names = [k for k in ref if not exactly_zero(k)]
    ours = max(vitlib.rel_error(g32[k].astype(np.float64), ref[k]) for k in names)
    torch32 = max(vitlib.rel_error(t32[k].astype(np.float64), ref[k]) for k in names)
    assert torch32 < 1e-4  # float32's round-off, not a bug on either side
    assert ours < 4 * torch32, f"vitlib float32 {ours:.1e}, transformers float32 {torch32:.1e}"


def test_loading_needs_no_torch(tmp_path):
    cfg = hf_cfg()
    saved_model(tmp_path, cfg)
    code = (
        "import sys, vitlib\n"
        f"params, cfg = vitlib.interop.load_hf({str(tmp_path)!r})\n"
        "assert cfg.style == 'hf' and 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_legacy_checkpoint_names_load_the_same(tmp_path):
    """transformers 4.x checkpoints name the layers `vit.encoder.layer.b.attention.attention.query` ..."""
    cfg = hf_cfg()
    model, _ = saved_model(tmp_path, cfg)
    state = to_hf(from_hf(model.state_dict(), cfg), cfg)
    renames = {
        "vit.layers.": "vit.encoder.layer.",
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    legacy = {}
    for k, v in state.items():
        for a, b in renames.items():
            k = k.replace(a, b)
        legacy[k] = v
    new, old = from_hf(state, cfg), from_hf(legacy, cfg)
    assert all(np.array_equal(new[k], old[k]) for k in new)


# ---------------------------------------------------------------- clear errors


def _folder(tmp_path, **config_changes):
    cfg = hf_cfg()
    _, folder = saved_model(tmp_path, cfg)
    d = json.loads((folder / "config.json").read_text())
    d.update(config_changes)
    (folder / "config.json").write_text(json.dumps(d))
    return folder


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(model_type="deit"), "model_type"),
        (dict(architectures=["ViTModel"]), "not a ViT image classifier"),
        (dict(hidden_act="gelu_new"), "'gelu_new' \\(the tanh GELU\\)"),
        (dict(hidden_act="gelu_pytorch_tanh"), "tanh GELU"),
        (dict(hidden_act="relu"), "'relu'"),
        (dict(qkv_bias=False), "qkv_bias=False"),
        (dict(layer_norm_eps=1e-6), "layer_norm_eps=1e-06"),
        (dict(hidden_size=12), "does not fit|must have shape"),
    ],
)
def test_unsupported_or_inconsistent_configs_are_refused_by_name(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_hf(_folder(tmp_path, **change))


def test_missing_files_and_tensors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_hf(tmp_path / "nowhere")
    folder = _folder(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="never a pickle"):
        load_hf(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(folder)
    cfg = hf_cfg()
    state = to_hf(vitlib.init_params(cfg, dtype=np.float64), cfg)
    del state["vit.layers.1.attention.k_proj.bias"]
    with pytest.raises(ValueError, match="missing.*k_proj.bias"):
        from_hf(state, cfg)
    state = to_hf(vitlib.init_params(cfg, dtype=np.float64), cfg)
    state["vit.embeddings.patch_embeddings.projection.weight"] = np.zeros((10, 3, 2, 3))
    with pytest.raises(ValueError, match="projection.weight.*shape"):
        from_hf(state, cfg)


def test_hf_config_refuses_a_non_dict():
    with pytest.raises(TypeError, match="config.json dict"):
        hf_config("config.json")


@pytest.mark.parametrize("sizes", [dict(), dict(channels=1, patch_size=1, image_size=(2, 3))], ids=["F=12", "F=1"])
def test_conversions_return_fresh_arrays(sizes):
    """Nothing from_hf / to_hf returns is a view of its input, even where a transpose is already contiguous."""
    cfg = hf_cfg(**sizes)
    params = vitlib.init_params(cfg, dtype=np.float64)
    state = to_hf(params, cfg)
    back = from_hf(state, cfg)
    for k, v in state.items():
        assert not any(np.shares_memory(v, p) for p in params.values()), k
    for k, v in back.items():
        assert not any(np.shares_memory(v, s) for s in state.values()), k
