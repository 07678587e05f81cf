"""The names of the exercises, in the book's order: the one list that cases, references and oracles are keyed by."""

EXERCISE_NAMES = (
    "softmax_ce_backward",
    "linear_backward",
    "pool_backward",
    "gelu_tanh_backward",
    "gelu_erf_backward",
    "layernorm_backward",
    "softmax_backward",
    "attention_head_backward",
    "attention_backward",
    "postln_block_backward",
    "preln_block_backward",
    "tokens_backward",
    "unpatchify",
    "patch_embed_backward",
    "numerical_gradient",
    "sgd_step",
    "momentum_step",
    "adamw_step",
    "vit_train_step",
)
