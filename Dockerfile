# xpgrad training image. See the Docker section of README.md.
#
#   docker build -t xpgrad .                                   # GPU (CUDA 12, CuPy)
#   docker build --build-arg CUDA_EXTRA=cpu -t xpgrad:cpu .    # CPU only (NumPy, no CuPy)
#
# BASE_IMAGE must be a Debian/Ubuntu image. For the GPU variants it must be an
# NVIDIA CUDA *devel* image: CuPy compiles its ElementwiseKernels at run time
# with NVRTC, which needs the CUDA headers that the -runtime images lack.
# The default, CUDA 12.8.1 on Ubuntu 24.04, has NVRTC for every GPU CuPy
# supports up to Blackwell (sm_120). For CUDA 13 use
#   --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04 --build-arg CUDA_EXTRA=cuda13
# For the CPU variant any Debian/Ubuntu image works, e.g. debian:bookworm-slim.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04

FROM ${BASE_IMAGE}

# Which xpgrad extra provides the array backend: cuda12 (cupy-cuda12x),
# cuda13 (cupy-cuda13x), or cpu (no CuPy; train with --device cpu).
ARG CUDA_EXTRA=cuda12
# The user the image runs as. 1000 is the usual first desktop user, so files
# written into bind-mounted folders belong to you; pass --build-arg
# XPGRAD_UID=$(id -u) --build-arg XPGRAD_GID=$(id -g) to match yours exactly.
ARG XPGRAD_UID=1000
ARG XPGRAD_GID=1000

LABEL org.opencontainers.image.title="xpgrad" \
      org.opencontainers.image.description="Small autodiff and MLP training on NumPy (CPU) and CuPy (CUDA)" \
      org.opencontainers.image.licenses="MIT"

# 1. Python with venv support. The NVIDIA CUDA images ship without Python, so
#    it comes from the distribution's apt repository when missing; a base that
#    already has python3 + python3-venv + CA certificates (like the small
#    Debian image the tests build) skips apt. Versions are those of the base
#    image's distribution release, which BASE_IMAGE pins.
# 2. The non-root user, replacing any account that already holds its uid/gid
#    (Ubuntu 24.04 images ship a user "ubuntu" with uid 1000), and the folders
#    that become volumes, owned by that user so writes work in fresh volumes.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null \
        || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && if entry=$(getent passwd "$XPGRAD_UID"); then userdel --remove "${entry%%:*}" 2>/dev/null || userdel "${entry%%:*}"; fi \
    && if entry=$(getent group "$XPGRAD_GID"); then groupdel "${entry%%:*}"; fi \
    && groupadd --gid "$XPGRAD_GID" xpgrad \
    && useradd --uid "$XPGRAD_UID" --gid "$XPGRAD_GID" --create-home --shell /bin/sh xpgrad \
    && mkdir -p /data /runs /cache/cupy /cache/matplotlib \
    && chown -R xpgrad:xpgrad /data /runs /cache

ENV PATH=/opt/xpgrad/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XPGRAD_CACHE_DIR=/data \
    CUPY_CACHE_DIR=/cache/cupy \
    MPLCONFIGDIR=/cache/matplotlib

# /data:       datasets, one folder per dataset (/data/mnist, /data/fashion-mnist),
#              found there or downloaded there (XPGRAD_CACHE_DIR); read-only is fine
#              when the files are present.
# /runs:       run outputs (metrics.jsonl, checkpoint.npz, curves.png).
# /cache/cupy: CuPy's compiled kernels, so later containers skip the NVRTC compile.
VOLUME ["/data", "/runs", "/cache/cupy"]
# From /, the CLI's default --out, runs/<dataset>-<recipe>, lands in the /runs volume.
WORKDIR /
ENTRYPOINT ["xpgrad"]
# auto: the GPU when the container has one (docker run --gpus all), else the CPU.
# Pass --device cuda to fail fast instead when no GPU is visible.
CMD ["train", "--device", "auto"]

# Dependencies first, from pyproject.toml alone (plus an empty placeholder
# package and README, in a scratch folder so no stale build output can reach
# the real install), so this slow layer is reused while only the source
# changes. pip is the one ensurepip bundles: it is not upgraded.
COPY pyproject.toml /tmp/xpgrad-deps/
RUN case "$CUDA_EXTRA" in \
        cuda12|cuda13) extras="train,plot,$CUDA_EXTRA" ;; \
        cpu) extras="train,plot" ;; \
        *) echo "CUDA_EXTRA must be cuda12, cuda13 or cpu, not '$CUDA_EXTRA'" >&2; exit 2 ;; \
    esac \
    && python3 -m venv /opt/xpgrad \
    && mkdir /tmp/xpgrad-deps/xpgrad \
    && : >/tmp/xpgrad-deps/xpgrad/__init__.py \
    && : >/tmp/xpgrad-deps/README.md \
    && pip install --no-cache-dir --disable-pip-version-check "/tmp/xpgrad-deps[${extras}]" \
    && rm -rf /tmp/xpgrad-deps

# The package itself (the context is only pyproject.toml, README.md and
# xpgrad/, see .dockerignore), leaving the dependencies above alone.
COPY . /tmp/xpgrad-src/
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --force-reinstall /tmp/xpgrad-src \
    && rm -rf /tmp/xpgrad-src \
    && xpgrad --version

# Numeric, so runtimes that check runAsNonRoot can verify it.
USER ${XPGRAD_UID}:${XPGRAD_GID}
