"""xpgrad.data.read_idx: the real MNIST files read right, and every kind of broken file a clear error."""

import numpy as np
import pytest

from xpgrad import data
from xpgrad.data import idx
from xpgrad.errors import DataError

from .helpers import (
    MNIST_DIR,
    MNIST_TEST_COUNTS,
    T10K_IMAGES,
    T10K_LABELS,
    gz,
    labels_with_count,
    payload,
    set_byte,
)


def test_reads_real_mnist_test_images():
    x = data.read_idx(T10K_IMAGES)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert x.min() == 0 and x.max() == 255
    assert 30 < x.mean() < 37  # MNIST digits: mostly black background, mean about 33
    assert x.flags.writeable


def test_reads_real_mnist_labels():
    y = data.read_idx(T10K_LABELS)
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == MNIST_TEST_COUNTS
    y_train = data.read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz")
    counts = np.bincount(y_train, minlength=10)
    assert y_train.shape == (60000,) and len(counts) == 10 and counts.min() > 5000 and counts.max() < 7000


# ---------------------------------------------------------------------------
# Every kind of broken file


IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
CORRUPTIONS = {
    # case: (file name, bytes as written, words the message must contain)
    "bad magic": (IMAGES, lambda: gz(b"\x00\x00\x09\x03" + payload(T10K_IMAGES)[4:]), "magic number 0x00000903"),
    "not idx at all": (LABELS, lambda: b"<html>404 Not Found</html>", "not an MNIST IDX file"),
    "labels as images": (IMAGES, lambda: T10K_LABELS.read_bytes(), "holds labels where images"),
    "wrong dims": (IMAGES, lambda: gz(set_byte(payload(T10K_IMAGES), 15, 27)), "28x27, expected 28x28"),
    "truncated": (IMAGES, lambda: gz(payload(T10K_IMAGES)[:-100]), "truncated"),
    "trailing bytes": (LABELS, lambda: gz(payload(T10K_LABELS) + b"\0" * 5), "trailing bytes: more than the 10008"),
    "label out of range": (LABELS, lambda: gz(set_byte(payload(T10K_LABELS), 8 + 17, 10)), "label 10 at index 17"),
    "label count": (LABELS, lambda: gz(labels_with_count(9999)), "holds 9999 labels, expected 10000"),
    "test images as train": ("train-images-idx3-ubyte.gz", lambda: T10K_IMAGES.read_bytes(), "wrong split"),
    "test labels as train": ("train-labels-idx1-ubyte.gz", lambda: T10K_LABELS.read_bytes(), "wrong split"),
    "gzip cut short": (IMAGES, lambda: T10K_IMAGES.read_bytes()[:50000], "corrupt gzip"),
    "gzip bad crc": (LABELS, lambda: set_byte(T10K_LABELS.read_bytes(), -6, 0), "corrupt gzip"),
    "gzip garbled": (IMAGES, lambda: T10K_IMAGES.read_bytes()[:1000] + b"\xff" * 4000, "corrupt gzip"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_broken_file_is_a_one_line_data_error_naming_the_file(case, tmp_path):
    name, make, words = CORRUPTIONS[case]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(DataError) as info:
        data.read_idx(path)
    message = str(info.value)
    # A fix, and not "re-download": read_idx reads any file, not only a download.
    assert str(path) in message and words in message and message.endswith(idx.OWN_FIX)
    assert "\n" not in message


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found.*--data-dir"):
        data.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


def test_plain_uncompressed_idx_is_read(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(payload(T10K_LABELS))
    assert np.array_equal(data.read_idx(path), data.read_idx(T10K_LABELS))


def test_explicit_kind_and_count_override_the_name(tmp_path):
    path = tmp_path / "labels.bin.gz"
    path.write_bytes(T10K_LABELS.read_bytes())
    assert data.read_idx(path).shape == (10000,)  # no standard name: count not checked
    with pytest.raises(DataError, match="wrong split"):
        data.read_idx(path, count=60000)
    with pytest.raises(DataError, match="holds labels where images"):
        data.read_idx(path, kind="images")


# ---------------------------------------------------------------------------
# Header arithmetic, checked before anything is allocated (issue 20, class E)

BIG = 2**32 - 1  # the largest count an IDX header can hold


def image_header(count, rows, cols):
    return b"".join(n.to_bytes(4, "big") for n in (0x0803, count, rows, cols))


@pytest.mark.parametrize("dims, words", [
    ((0, BIG, BIG), "0 images of 4294967295x4294967295 pixels, 18446744065119617025 bytes each"),
    ((1, BIG, BIG), "1 images of 4294967295x4294967295 pixels, 18446744065119617025 bytes each"),
    ((BIG, BIG, BIG), "bytes each"),
    ((5, BIG, 2**31 + 1), "9223372039002259455 bytes each"),
    ((BIG, 2**31, 2**31), "19807040623954398379958599680 bytes in all"),
    ((2**31, 2**16, 2**16), "9223372036854775808 bytes in all"),
], ids=["none of 2^32-1 squared", "one", "2^32-1 cubed", "each too big", "all too big", "one past the limit"])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_header_whose_sizes_no_array_can_hold_is_one_line_before_any_allocation(tmp_path, dims, words, compressed):
    """The issue's case (0 images of 4294967295 x 4294967295 pixels gave a 26-line traceback from NumPy) and
    others like it: whatever the count, the products are checked first, in Python's unbounded integers."""
    import tracemalloc

    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(gz(image_header(*dims)) if compressed else image_header(*dims))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            data.read_idx(path, kind="images", image_shape=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert words in message and "more than an array can hold (9223372036854775807 bytes)" in message
    assert str(path) in message and "\n" not in message
    assert peak < 4 << 20  # the file's few bytes and the reader's buffers, nothing of the header's size


def test_a_header_of_no_images_that_an_array_can_hold_reads_as_an_empty_array(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(image_header(0, BIG, 3))
    assert data.read_idx(path, kind="images", image_shape=None).shape == (0, BIG, 3)
