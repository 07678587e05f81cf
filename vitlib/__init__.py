"""vitlib: one ViT training step -- forward, softmax cross-entropy, a hand-written backward
pass through every layer, and the optimizer update -- in numpy, checked against torch.

    cfg = vitlib.ViTConfig(image_size=8, patch_size=2, num_classes=10, dim=64, depth=4,
                           heads=4, mlp_dim=128, channels=1, dim_head=16)
    params = vitlib.init_params(cfg, seed=0, dtype=np.float64)
    loss, grads = vitlib.loss_and_grads(params, x, y, cfg)
    params = vitlib.sgd_step(params, grads, lr=0.1)
"""

from . import interop, seed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ViTConfig
from .gradcheck import check_gradients, cmp, directional_check, rel_error
from .model import attention_maps, backward, forward, logits, loss_and_grads
from .optim import adamw_init, adamw_step, momentum_init, momentum_step, sgd_step
from .params import init_params, param_shapes

__all__ = [
    "ViTConfig",
    "init_params",
    "param_shapes",
    "loss_and_grads",
    "logits",
    "attention_maps",
    "forward",
    "backward",
    "sgd_step",
    "momentum_init",
    "momentum_step",
    "adamw_init",
    "adamw_step",
    "check_gradients",
    "directional_check",
    "rel_error",
    "cmp",
    "interop",
    "seed",
    "save_checkpoint",
    "load_checkpoint",
]
