"""Stepper: click through optimizer steps of a ViT and watch the loss, the cls token's attention
and the gradient norms move (chapter 11).

    stepper = Stepper(params=params, cfg=cfg, x=x, y=y, lr=0.1)   # SGD; optimizer="momentum"/"adamw"
    stepper.widget                     # display it (a notebook cell's last expression)
    stepper.step_button.click()        # one step, from Python too: tests drive it this way
    stepper.losses, stepper.params     # the loss before each accepted step; the current weights

Every step goes through vitlib.train.train_step, the function the training loop uses.
The caller's params are copied, never changed. A step whose loss or new weights are not
finite (a learning rate far too high) is refused: the last finite weights stay, the status
line says why, and nothing steps again until reset.
"""

import io
import math

import numpy as np

from .train import LR_MAX, blas_threads, check_hyper, cls_attention_map, init_optimizer, layer_grad_norms, train_step
from .validate import check_images, check_int, check_labels, check_params


def _finite(params) -> bool:
    return all(np.isfinite(v).all() for v in params.values())


class Stepper:
    """Interactive optimizer steps on one batch (x, y). See the module docstring."""

    def __init__(
        self,
        params,
        cfg,
        x,
        y,
        lr=0.1,
        optimizer="sgd",
        weight_decay=0.0,
        momentum=0.9,
        image_index=0,
        figsize=(9, 2.5),
    ):
        import ipywidgets as w

        dtype = check_params(params, cfg)
        for k, v in params.items():  # the promise: the Stepper never holds NaN weights
            if not np.isfinite(v).all():
                raise ValueError(f"params[{k!r}] holds NaN or inf: the Stepper starts from finite weights only")
        self.cfg = cfg
        self.x = check_images(x, cfg, dtype)
        self.y = check_labels(y, self.x.shape[0], cfg.num_classes)
        # the same checks as a training Recipe (the CLI and vitlib.train.train)
        optimizer, lr, weight_decay, momentum = check_hyper(optimizer, lr, weight_decay, momentum)
        self.image_index = check_int("image_index", image_index, 0, len(self.x) - 1)
        self.optimizer, self.weight_decay, self.momentum = optimizer, weight_decay, momentum
        self.figsize = figsize
        self._initial = {k: np.array(v, copy=True) for k, v in params.items()}  # the caller's dict stays theirs

        e = math.log10(lr)
        self.lr_slider = w.FloatLogSlider(
            value=lr,
            base=10,
            min=math.floor(e) - 3,
            max=min(math.ceil(e) + 2, math.log10(LR_MAX)),
            step=0.05,
            description="lr",
            readout_format=".2e",
            continuous_update=False,
        )
        self.step_button = w.Button(description="step", tooltip="one optimizer step")
        self.run_button = w.Button(description="run 10 steps")
        self.reset_button = w.Button(description="reset", tooltip="back to the initial weights")
        self.status = w.HTML()
        self.image = w.Image(format="png")
        self.step_button.on_click(lambda _: self.step(1))
        self.run_button.on_click(lambda _: self.step(10))
        self.reset_button.on_click(lambda _: self.reset())
        controls = w.HBox([self.step_button, self.run_button, self.reset_button, self.lr_slider])
        self.widget = w.VBox([controls, self.status, self.image])
        self.reset()

    # ---- state ----
    def reset(self):
        """Back to the initial weights and a fresh optimizer; clears the history and any refusal."""
        self.params = {k: v.copy() for k, v in self._initial.items()}
        self.opt_state = init_optimizer(self.optimizer, self.params)
        self.losses: list[float] = []
        self.grad_norms: list[dict[str, float]] = []
        self.blown_up = False
        self._set_buttons(True)
        self._say(f"ready: {self.optimizer} on {len(self.x)} images; click step")
        self.render()

    def step(self, n=1) -> int:
        """Up to n optimizer steps with the slider's lr; -> how many were taken (stops at a refusal)."""
        n = check_int("n", n, 1)
        if self.blown_up:  # the status line still says why; only reset leaves this state
            return 0
        lr = check_hyper(self.optimizer, float(self.lr_slider.value))[1]
        taken = 0
        for _ in range(n):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"), blas_threads(1):
                loss, new, state, grads = train_step(
                    self.params, self.opt_state, self.x, self.y, self.cfg, lr, self.optimizer, self.weight_decay,
                    self.momentum,
                )  # fmt: skip
            if not (np.isfinite(loss) and _finite(new)):
                self.blown_up = True
                self._set_buttons(False)
                what = "the loss" if not np.isfinite(loss) else "the weights"
                self._say(
                    f"refused step {len(self.losses) + 1}: with lr = {lr:.3g} {what} would not be finite; "
                    f"kept the weights of step {len(self.losses)}. Lower the lr and press reset.",
                    error=True,
                )
                break
            self.params, self.opt_state = new, state
            self.losses.append(float(loss))
            self.grad_norms.append(layer_grad_norms(grads, self.cfg))
            taken += 1
        if not self.blown_up:
            self._say(f"step {len(self.losses)}: loss {self.losses[-1]:.4f} (before the update), lr {lr:.3g}")
        self.render()
        return taken

    # ---- display ----
    def _set_buttons(self, enabled):
        self.step_button.disabled = self.run_button.disabled = not enabled

    def _say(self, text, error=False):
        color = "#b00020" if error else "#333333"
        self.status.value = f'<span style="color:{color}">{text}</span>'

    def render(self):
        """Redraw the three panels into the Image widget (PNG): works with or without a kernel."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figsize, dpi=80, layout="constrained")
        FigureCanvasAgg(fig)
        ax_loss, ax_attn, ax_grad = fig.subplots(1, 3)
        steps = np.arange(1, len(self.losses) + 1)
        ax_loss.plot(steps, self.losses, ".-", color="C0")
        ax_loss.set(xlabel="step", ylabel="loss (before the step)", title="loss")
        img = self.x[self.image_index, 0]
        with np.errstate(all="ignore"):
            attn = cls_attention_map(self.params, self.x[self.image_index : self.image_index + 1], self.cfg)[0]
        ih, iw = img.shape
        ax_attn.imshow(attn, cmap="magma", extent=(0, iw, ih, 0))  # one cell per patch
        ax_attn.contour(np.arange(iw) + 0.5, np.arange(ih) + 0.5, img, levels=[0.4], colors="white", linewidths=1)
        ax_attn.set(title=f"cls attention, last block (y={self.y[self.image_index]})", xticks=[], yticks=[])
        if self.grad_norms:
            for name in self.grad_norms[0]:
                ax_grad.semilogy(steps, [g[name] for g in self.grad_norms], label=name)
            ax_grad.legend(fontsize=6)
        ax_grad.set(xlabel="step", title="gradient norm per layer")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.image.value = buf.getvalue()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def offline_jshtml(animation, **kwargs) -> str:
    """animation.to_jshtml(**kwargs) without any web request. matplotlib draws the player's buttons with
    Font Awesome icons and links the icon font from a CDN; the book's theme ships that font itself, so only
    the link goes. Raises ValueError if anything still points at the web (a newer matplotlib template, say)."""
    import re

    html = re.sub(r"<link[^>]*font-awesome[^>]*>", "", animation.to_jshtml(**kwargs))
    left = re.findall(r"https?://[^\"' )]+", html)
    if left:
        raise ValueError(f"the animation's HTML still loads from the web: {left}")
    return html
