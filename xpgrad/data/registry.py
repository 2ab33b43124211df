"""The known datasets: their four files, checksums and download mirrors."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError

#: The number of images in each split of the known datasets.
SPLIT_SIZES = {"train": 60000, "test": 10000}
#: (rows, cols) of the known datasets' images.
IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class IdxFile:
    """One file of a dataset and what a valid copy of it looks like."""

    fname: str  #: the file's name, as upstream names it (``train-images-idx3-ubyte.gz``)
    kind: str  #: "images" or "labels"
    count: int  #: number of images or labels
    gz_hash: str  #: upstream .gz checksum, as pooch takes it: "sha256:..." or "md5:..."
    payload_sha256: str | None  #: sha256 of the decompressed IDX bytes, where known

    @property
    def payload_size(self) -> int:
        """Bytes of the decompressed IDX file: header, then one byte per pixel or label."""
        if self.kind == "images":
            return 16 + self.count * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
        return 8 + self.count

    @property
    def max_download(self) -> int:
        """The most bytes a download of it may take: deflate never grows data by more than this."""
        return self.payload_size + self.payload_size // 100 + (1 << 16)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its four files in a fixed order, and where to download them.

    ``name`` is what ``--dataset`` takes; ``mirrors`` the base URLs tried in
    turn; ``train_images``, ``train_labels``, ``test_images`` and
    ``test_labels`` the four :class:`IdxFile`.
    """

    name: str
    mirrors: tuple[str, ...]
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile

    @property
    def files(self) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
        """The four files, in the order train images, train labels, test images, test labels."""
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


def _idx_files(gz_hashes: dict, payload_hashes: dict) -> dict:
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, stem in (("images", "images-idx3"), ("labels", "labels-idx1")):
            fname = f"{prefix}-{stem}-ubyte.gz"
            key = f"{split}_{kind}"
            files[key] = IdxFile(fname, kind, SPLIT_SIZES[split], gz_hashes[key], payload_hashes.get(key))
    return files


#: The known datasets by name: ``mnist``, ``fashion-mnist`` and ``kmnist``.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        **_idx_files(
            {
                "train_images": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "train_labels": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "test_images": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "test_labels": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            },
            {  # train images: only the upstream .gz hash is known
                "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
        ),
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        **_idx_files(
            {  # upstream publishes md5 of the .gz files
                "train_images": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train_labels": "md5:25c81989df183df01b3e8a0aad5dffbe",
                "test_images": "md5:bef4ecab320f06d8554ea6380940ec79",
                "test_labels": "md5:bb300cfdad3c16e7a12a480ee83cd310",
            },
            {
                "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
        ),
    ),
    # Kuzushiji-MNIST (https://github.com/rois-codh/kmnist): ten classes of cursive
    # Japanese characters, a drop-in for MNIST. The md5 sums of the .gz files are
    # the ones torchvision publishes for its KMNIST dataset (pytorch/vision,
    # torchvision/datasets/mnist.py, KMNIST.resources); their payload hashes are
    # not published, so only the upstream .gz files are accepted. This machine
    # cannot download them: the entry is tested against a loopback mirror only.
    "kmnist": DatasetSpec(
        "kmnist",
        mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
        **_idx_files(
            {
                "train_images": "md5:bdb82020997e1d708af4cf47b453dcf7",
                "train_labels": "md5:e144d726b3acfaa3e44228e80efcd344",
                "test_images": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
                "test_labels": "md5:7320c461ea6c1c855c0b718fb2a4b134",
            },
            {},
        ),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset called ``name``, or a DataError listing the known names."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}, "
                        "or idx with --data-dir for your own IDX files")
    return DATASETS[name]
