"""The digits data set (sklearn's bundled 8x8 handwritten digits) and its augmentation, in numpy.

    x_train, y_train, x_test, y_test = load_digits_split()      # x (N, 1, 8, 8) float32 in [0, 1]
    x_aug = random_shift(x_batch, rng, max_shift=1)              # a new array; x_batch is untouched

Pixels are divided by 16 (their maximum) and nothing else: any further normalisation is the
model's job (the first LayerNorm of every block). The split is sklearn's
train_test_split(test_size=0.2, random_state=0, stratify=y): 1437 training and 360 test images.
"""

import numpy as np


def load_digits_split(dtype=np.float32):
    """-> (x_train, y_train, x_test, y_test); x (N, 1, 8, 8) in `dtype`, y (N,) int64."""
    from sklearn.datasets import load_digits  # bundled with sklearn: nothing is downloaded
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(dtype)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def random_shift(x, rng, max_shift=1, prob=1.0, fill=0.0):
    """Shift each image of x (N, C, h, w), with probability `prob`, by its own random (dy, dx) in
    [-max_shift, max_shift]^2, filling the uncovered border with `fill` (the background: 0 for the digits
    and raw pixels, the standardised 0 for standardised Fashion-MNIST).
    Returns a new array; the random numbers drawn do not depend on max_shift == 0 or prob."""
    N, _, h, w = x.shape
    s = max_shift
    dy, dx = rng.integers(-s, s + 1, size=(2, N))
    keep = rng.random(N) >= prob
    dy[keep], dx[keep] = 0, 0
    if s == 0:
        return x.copy()
    padded = np.full((N, x.shape[1], h + 2 * s, w + 2 * s), fill, dtype=x.dtype)
    padded[:, :, s : s + h, s : s + w] = x
    # image n is the h x w window of its padded copy starting at (s - dy_n, s - dx_n)
    rows = (s - dy)[:, None] + np.arange(h)  # (N, h)
    cols = (s - dx)[:, None] + np.arange(w)  # (N, w)
    return padded[np.arange(N)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]  # fmt: skip


def random_flip(x, rng, prob=0.5):
    """Mirror each image of x (N, C, h, w) left-right with probability `prob` -> a new array (clothes are
    left-right symmetric in kind: a mirrored shirt is a shirt; digits are not, so their recipe does not flip)."""
    flip = rng.random(x.shape[0]) < prob
    out = x.copy()
    out[flip] = x[flip][..., ::-1]
    return out


# ------------------------------------------------------------------ Fashion-MNIST (Debian's dataset-fashion-mnist)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# (file stem, idx magic number, count): the official split, 60,000 training and 10,000 test images of 28 x 28
# the training set's pixel mean and standard deviation, of pixels / 255 (tests/test_fashion_data.py measures both)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
_FASHION_FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051, 60000),
    "train_labels": ("train-labels-idx1-ubyte", 2049, 60000),
    "test_images": ("t10k-images-idx3-ubyte", 2051, 10000),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, 10000),
}


def read_idx(path, magic, count=None, item_shape=None) -> np.ndarray:
    """One idx file (LeCun's format: a big-endian int32 magic number 0x0000 08 0d, then d int32 sizes, then uint8
    data), gzipped (`.gz`) or not -> a uint8 array of shape (n, *item_shape). Checks the magic number, the sizes
    against `count` and `item_shape`, and that the data is exactly as long as the header says."""
    import gzip
    import os

    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # a truncated gzip stream, a file that is not gzip at all
        raise ValueError(f"{path}: cannot be read as an idx file ({exc})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an idx header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: idx magic number {magic} (0x{magic:08x}) expected, got {got} (0x{got:08x})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, {header} needed)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if count is not None and dims[0] != count:
        raise ValueError(f"{path}: {count} items expected, the header says {dims[0]}")
    if item_shape is not None and dims[1:] != tuple(item_shape):
        raise ValueError(f"{path}: items of shape {tuple(item_shape)} expected, the header says {dims[1:]}")
    n_bytes = int(np.prod(dims))
    if len(raw) - header != n_bytes:
        raise ValueError(f"{path}: truncated or padded: {n_bytes} data bytes expected, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_fashion_mnist(folder=None, counts=None):
    """Fashion-MNIST from the four idx `.gz` files of Debian's `dataset-fashion-mnist` (nothing is downloaded).

    -> (x_train, y_train, x_test, y_test): x (N, 1, 28, 28) uint8 pixels (divide by 255 for the model), y (N,) int64
    in 0..9 (names in FASHION_MNIST_CLASSES). `folder` defaults to $VITLIB_FASHION_MNIST_DIR if set, else to
    /usr/share/datasets/fashion-mnist; a missing
    folder or file says how to install the package; a truncated or foreign file is a ValueError. `counts` (tests
    only) overrides the expected (train, test) sizes, 60,000 and 10,000.
    """
    import os

    if folder is None:  # VITLIB_FASHION_MNIST_DIR: another copy of the four files (the tests' stand-ins)
        folder = os.environ.get("VITLIB_FASHION_MNIST_DIR") or FASHION_MNIST_DIR
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {folder} is not a folder. Install Debian's package: `{FASHION_MNIST_INSTALL}`"
            " (as root; `make data` does it), or pass the folder holding the four idx .gz files."
        )
    n_train, n_test = (None, None) if counts is None else counts
    arrays = {}
    for key, (stem, magic, n) in _FASHION_FILES.items():
        n = n if counts is None else (n_train if key.startswith("train") else n_test)
        candidates = [os.path.join(folder, stem + ext) for ext in (".gz", "")]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST: {os.path.join(folder, stem + '.gz')} is missing. Install Debian's package: "
                f"`{FASHION_MNIST_INSTALL}`"
            )
        arrays[key] = read_idx(path, magic, n, (28, 28) if magic == 2051 else ())
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if labels.max(initial=0) > 9:
            raise ValueError(f"Fashion-MNIST {split} labels must lie in 0..9, got a {int(labels.max())}")
    return (
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
    )
