"""vitlib.data.load_fashion_mnist: idx files written here, in a temporary folder; the real files where installed."""

import gzip
import os

import numpy as np
import pytest

from vitlib.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_INSTALL,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist,
    random_flip,
    random_shift,
    read_idx,
)


def write_idx(path, array, magic=None, gz=True):
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)
    return raw


def write_set(folder, n_train=5, n_test=3, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for stem, a in data.items():
        write_idx(folder / (stem + (".gz" if gz else "")), a, gz=gz)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_loads_what_was_written(tmp_path, gz):
    data = write_set(tmp_path, gz=gz)
    x_train, y_train, x_test, y_test = load_fashion_mnist(tmp_path, counts=(5, 3))
    assert x_train.shape == (5, 1, 28, 28) and x_test.shape == (3, 1, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train[:, 0], data["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, data["t10k-labels-idx1-ubyte"])


def test_official_counts_are_required_by_default(tmp_path):
    write_set(tmp_path)
    with pytest.raises(ValueError, match="60000 items expected, the header says 5"):
        load_fashion_mnist(tmp_path)


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    assert "apt-get install -y dataset-fashion-mnist" == FASHION_MNIST_INSTALL


def test_missing_file_names_it(tmp_path):
    write_set(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz is missing.*apt-get install"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_truncated_data(tmp_path):
    write_set(tmp_path)
    raw = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(ValueError, match="truncated or padded: 3920 data bytes expected, found 3910"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_truncated_gzip_stream(tmp_path):
    write_set(tmp_path)
    blob = (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cannot be read as an idx file"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_foreign_file(tmp_path):
    write_set(tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"<html>not an idx file</html>")
    with pytest.raises(ValueError, match="idx magic number 2049 .* expected, got"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_not_gzip_although_named_gz(tmp_path):
    write_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ValueError, match="cannot be read as an idx file"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_images_and_labels_swapped(tmp_path):
    data = write_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", data["train-images-idx3-ubyte"])
    with pytest.raises(ValueError, match="magic number 2049"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_wrong_image_size(tmp_path):
    write_set(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 32, 32)))
    with pytest.raises(ValueError, match=r"items of shape \(28, 28\) expected, the header says \(32, 32\)"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_label_out_of_range(tmp_path):
    write_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", [1, 2, 12])
    with pytest.raises(ValueError, match="labels must lie in 0..9, got a 12"):
        load_fashion_mnist(tmp_path, counts=(5, 3))


def test_read_idx_returns_a_writable_copy(tmp_path):
    write_idx(tmp_path / "a.gz", [[1, 2], [3, 4]])
    a = read_idx(tmp_path / "a.gz", 0x0802)
    a[0, 0] = 9  # not a read-only view of the file's bytes
    assert a.tolist() == [[9, 2], [3, 4]]


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason=f"{FASHION_MNIST_DIR} absent (make data)")
def test_the_real_files():
    x_train, y_train, x_test, y_test = load_fashion_mnist()
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10
    x = x_train / 255.0
    assert abs(x.mean() - 0.2860) < 5e-5 and abs(x.std() - 0.3530) < 5e-5  # the dataset's published statistics
    assert (FASHION_MNIST_MEAN, FASHION_MNIST_STD) == (0.2860, 0.3530)  # what vitlib.train.model_input subtracts


def test_random_flip_mirrors_the_chosen_images_only():
    x = np.arange(2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4)
    x0 = x.copy()
    out = random_flip(x, np.random.default_rng(0), prob=1.0)
    np.testing.assert_array_equal(out, x0[..., ::-1])
    np.testing.assert_array_equal(x, x0)  # input untouched
    np.testing.assert_array_equal(random_flip(x, np.random.default_rng(0), prob=0.0), x0)
    rng = np.random.default_rng(1)
    flips = np.random.default_rng(1).random(2) < 0.5
    out = random_flip(x, rng, prob=0.5)
    for n in range(2):
        np.testing.assert_array_equal(out[n], x0[n, ..., ::-1] if flips[n] else x0[n])


def test_random_shift_fills_with_the_background():
    x = np.ones((3, 1, 5, 5), dtype=np.float32)
    out = random_shift(x, np.random.default_rng(0), max_shift=2, prob=1.0, fill=-0.81)
    moved = ~(out == 1).all(axis=(1, 2, 3))
    assert moved.any()
    assert set(np.unique(out[moved]).tolist()) == {np.float32(-0.81).item(), 1.0}
    # the same draws as with the default fill: only the border's value differs
    zero = random_shift(x, np.random.default_rng(0), max_shift=2, prob=1.0)
    np.testing.assert_array_equal(out == 1, zero == 1)
