"""How a kernel is kept: its CUDA source as data, built into a CuPy kernel object on first use.

A :class:`KernelSpec` is a ``cupy.ElementwiseKernel``: CuPy writes the loop
and the indexing around an operation on one element, and compiles it once per
dtype. A :class:`RawKernelSpec` is a ``cupy.RawKernel``, for kernels that
choose their own launch shape (tiles in shared memory, several elements per
thread, sums across blocks, counters they advance): its source is written
against type placeholders (``T`` for floats, ``S`` for labels) and compiled
once per binding of them. Both are built through :mod:`xpgrad.backend`, so nothing
here imports CuPy, and every spec is listed in :data:`KERNELS`, so tests can
compile each one without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import backend

#: Dtypes each type placeholder of a kernel can be bound to (for compile checks).
TYPE_CHOICES = {"T": ("float32", "float64"), "S": ("int32", "int64")}
#: The C type of each dtype a placeholder can be bound to.
C_TYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long"}

#: Every kernel, by CUDA name.
KERNELS: dict[str, KernelSpec | RawKernelSpec] = {}

# The launch shape every raw kernel is written for: blocks of THREADS threads,
# each holding PER_THREAD values of a tile at a time.
THREADS = 256
PER_THREAD = 8
TILE = THREADS * PER_THREAD
#: At most this many blocks per launch; blocks loop over the rest of the work.
MAX_BLOCKS = 2048


@dataclass
class KernelSpec:
    """One ``cupy.ElementwiseKernel`` as data, built on first call.

    ``scalars`` names the input parameters passed as Python scalars, and
    ``raw_ndim`` the ndim of each ``raw`` array as it is passed; both describe
    the call for checks that generate the source without calling the kernel.
    """

    name: str
    in_params: str
    out_params: str
    operation: str
    preamble: str = ""
    scalars: tuple[str, ...] = ()
    raw_ndim: dict[str, int] = field(default_factory=dict)
    _kernel: object = field(default=None, init=False, repr=False, compare=False)

    def build(self):
        """A new CuPy kernel object for this spec (needs CuPy, not a GPU)."""
        return backend.elementwise_kernel(
            self.in_params, self.out_params, self.operation, self.name, preamble=self.preamble
        )

    def __call__(self, *args, **kwargs):
        if self._kernel is None:
            self._kernel = self.build()
        return self._kernel(*args, **kwargs)


@dataclass
class RawKernelSpec:
    """One ``cupy.RawKernel`` as data: CUDA source over type placeholders, built per binding on first launch.

    ``code`` defines one kernel, ``extern "C" __global__ void XPGRAD_KERNEL(...)``,
    after the shared ``prelude``; :meth:`source` puts ``typedef``s for the
    placeholders in ``types`` and the kernel's name in front. Every kernel is
    launched with blocks of :data:`THREADS` threads.
    """

    name: str
    code: str
    types: tuple[str, ...] = ("T",)
    prelude: str = ""
    _kernels: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def kernel_name(self, binding: dict) -> str:
        """The CUDA name of one binding, e.g. ``xpgrad_gather_batch_float32_int32``."""
        return "_".join([self.name, *(binding[v] for v in self.types)])

    def source(self, binding: dict) -> str:
        """The complete CUDA source for ``binding``, e.g. ``{"T": "float32", "S": "int64"}``."""
        head = [f"typedef {C_TYPES[binding[v]]} {v};" for v in self.types]
        head += [f"#define XPGRAD_KERNEL {self.kernel_name(binding)}",
                 f"#define XPGRAD_THREADS {THREADS}", f"#define XPGRAD_PER_THREAD {PER_THREAD}",
                 f"#define XPGRAD_TILE {TILE}"]
        return "\n".join(head) + "\n" + self.prelude + self.code

    def build(self, binding: dict):
        """A new CuPy kernel object for ``binding`` (needs CuPy, not a GPU)."""
        return backend.raw_kernel(self.source(binding), self.kernel_name(binding))

    def launch(self, binding: dict, blocks: int, args: tuple) -> None:
        """Run the kernel for ``binding`` on ``blocks`` blocks of :data:`THREADS` threads.

        ``args`` are arrays (passed as pointers) and NumPy scalars of the
        exact C types of the kernel's parameters.
        """
        key = tuple(binding[v] for v in self.types)
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = self._kernels[key] = self.build(binding)
        kernel((blocks,), (THREADS,), args)


def register(spec):
    """Add ``spec`` to :data:`KERNELS` and return it."""
    KERNELS[spec.name] = spec
    return spec
