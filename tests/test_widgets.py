"""The Stepper widget, driven from Python: clicks step, the loss falls, a blow-up is refused."""

import numpy as np
import pytest

import vitlib
from vitlib.data import load_digits_split
from vitlib.widgets import Stepper

pytest.importorskip("ipywidgets")

CFG = vitlib.ViTConfig(
    image_size=8, patch_size=2, num_classes=10, dim=16, depth=1, heads=2, mlp_dim=32, channels=1, dim_head=8
)


@pytest.fixture(scope="module")
def batch():
    x, y, _, _ = load_digits_split()
    return x[:20], y[:20]


@pytest.fixture
def params():
    return vitlib.init_params(CFG, seed=0)


def snapshot(p):
    return {k: v.copy() for k, v in p.items()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_clicks_step_and_the_loss_falls(params, batch):
    before = snapshot(params)
    s = Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], lr=0.5)
    assert s.losses == [] and same(s.params, params)
    s.step_button.click()
    assert len(s.losses) == 1 and not same(s.params, params)
    png = s.image.value
    s.run_button.click()
    s.run_button.click()
    assert len(s.losses) == 21 and len(s.grad_norms) == 21
    assert s.losses[-1] < 0.8 * s.losses[0] and np.mean(s.losses[-5:]) < np.mean(s.losses[:5])
    assert s.image.value != png and s.image.value[:4] == b"\x89PNG"
    assert "step 21" in s.status.value
    assert same(params, before)  # the caller's weights are untouched


def test_losses_are_taken_before_each_update(params, batch):
    s = Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], lr=0.1)
    p0 = snapshot(s.params)
    s.step_button.click()
    loss0, _ = vitlib.loss_and_grads(p0, *batch, CFG)
    assert s.losses[0] == pytest.approx(loss0, rel=1e-6)


@pytest.mark.parametrize("lr", [3.7e-7, 0.05, 1.0, 250.0])
def test_lr_slider_holds_the_given_lr(params, batch, lr):
    s = Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], lr=lr)
    assert s.lr_slider.value == pytest.approx(lr, rel=1e-12)
    assert s.lr_slider.base**s.lr_slider.min < lr < s.lr_slider.base**s.lr_slider.max


def test_slider_lr_is_used(params, batch):
    s = Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], lr=0.1)
    s.lr_slider.value = 0.01
    p0 = snapshot(s.params)
    s.step()
    _, grads = vitlib.loss_and_grads(p0, *batch, CFG)
    expected = vitlib.sgd_step(p0, grads, s.lr_slider.value)
    # not bit-exact: the stepper runs BLAS on one thread, this test on however many numpy has
    assert all(np.allclose(s.params[k], expected[k], rtol=1e-5, atol=1e-7) for k in p0)
    wrong = vitlib.sgd_step(p0, grads, 0.1)
    assert not all(np.allclose(s.params[k], wrong[k], rtol=1e-5, atol=1e-7) for k in p0)


@pytest.mark.parametrize("optimizer", ["momentum", "adamw"])
def test_other_optimizers(params, batch, optimizer):
    s = Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], lr=0.01, optimizer=optimizer)
    s.run_button.click()
    assert len(s.losses) == 10 and s.losses[-1] < s.losses[0]


def test_blow_up_is_refused_until_reset(params, batch):
    before = snapshot(params)
    s = Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], lr=1e4)  # the largest lr a recipe allows (LR_MAX)
    last_finite = snapshot(s.params)
    for _ in range(20):
        n = len(s.losses)
        s.step_button.click()
        if s.blown_up:
            break
        assert len(s.losses) == n + 1
        last_finite = snapshot(s.params)
    assert s.blown_up, "lr = 1e4 never produced a non-finite loss or weight"
    assert "refused" in s.status.value and "reset" in s.status.value
    assert all(np.isfinite(v).all() for v in s.params.values())
    assert same(s.params, last_finite)
    assert s.step_button.disabled and s.run_button.disabled
    n, message = len(s.losses), s.status.value
    s.step_button.click()
    s.run_button.click()
    assert len(s.losses) == n and same(s.params, last_finite) and s.status.value == message
    assert all(np.isfinite(s.losses))
    # reset: back to the caller's weights, stepping again
    s.lr_slider.value = 0.1
    s.reset_button.click()
    assert not s.blown_up and s.losses == [] and same(s.params, before)
    assert not s.step_button.disabled
    s.step_button.click()
    assert len(s.losses) == 1 and not s.blown_up
    assert same(params, before)


def test_bad_arguments(params, batch):
    with pytest.raises(ValueError, match="lr"):
        Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], lr=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1], optimizer="lbfgs")
    with pytest.raises(ValueError, match="shape"):
        Stepper(params=params, cfg=CFG, x=batch[0][:, :, :4], y=batch[1])


def test_widget_displays(params, batch):
    s = Stepper(params=params, cfg=CFG, x=batch[0], y=batch[1])
    bundle = s._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_offline_player_has_no_web_links():
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    from vitlib.widgets import offline_jshtml

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    (line,) = ax.plot([0, 1], [0, 1])
    anim = FuncAnimation(fig, lambda i: (line.set_ydata([0, i]), line)[1:], frames=2)
    html = offline_jshtml(anim)
    plt.close(fig)
    assert "http" not in html and "font-awesome" not in html
    assert '<i class="fa fa-play"></i>' in html  # the icons stay: the book's theme serves their font
