"""Every fused kernel's CUDA source, as CuPy compiles it, compiles for sm_90 without a GPU.

For an ElementwiseKernel the source comes from CuPy's own code generator
(see ``tests/kernel_source.py``) for each dtype binding and for the argument
layouts a call can produce; a RawKernel's source is its spec's, for each
binding of its type placeholders. NVRTC (the compiler CuPy uses at run time)
compiles it, and nvcc cross-checks one layout. A deliberately broken kernel
must fail, which shows the check can fail.
"""

import itertools
import shutil

import pytest

from xpgrad import backend, kernels

from . import kernel_source

pytestmark = pytest.mark.skipif(not backend.cupy_installed(), reason="CuPy is not installed")

ARCH = "90"

# (name, non-raw arrays contiguous, 32-bit indexing): after CuPy's reduce_dims,
# contiguous arrays are seen as 1-d, strided ones keep their 2 dims.
LAYOUTS = [("flat32", True, True), ("flat64", True, False), ("strided32", False, True), ("strided64", False, False)]


def _bindings(spec, kernel):
    used = {p.ctype for p in kernel.in_params + kernel.out_params if p.dtype is None}
    typevars = [v for v in kernels.TYPE_CHOICES if v in used]
    for combo in itertools.product(*(kernels.TYPE_CHOICES[v] for v in typevars)):
        yield dict(zip(typevars, combo))


def _args(spec, kernel, binding, contiguous):
    args = []
    for p in kernel.in_params + kernel.out_params:
        dtype = p.dtype if p.dtype is not None else binding[p.ctype]
        if p.name in spec.scalars:
            args.append(None)
        elif p.raw:
            # The kernel functions make every raw array C-contiguous.
            args.append((dtype, spec.raw_ndim[p.name], True))
        else:
            args.append((dtype, 1 if contiguous else 2, contiguous))
    return args


def _source(spec, binding, contiguous=True, index_32_bits=True):
    kernel = spec.build()
    args = _args(spec, kernel, binding, contiguous)
    source = kernel_source.elementwise_kernel_source(
        kernel, args, indexer_ndim=1 if contiguous else 2, index_32_bits=index_32_bits
    )
    return source, kernel_source.kernel_compile_options(kernel)


def _elementwise_specs():
    return [s for s in kernels.KERNELS.values() if isinstance(s, kernels.KernelSpec)]


def _raw_specs():
    return [s for s in kernels.KERNELS.values() if isinstance(s, kernels.RawKernelSpec)]


def _raw_bindings(spec):
    for combo in itertools.product(*(kernels.TYPE_CHOICES[v] for v in spec.types)):
        yield dict(zip(spec.types, combo))


def _raw_cases():
    return [pytest.param(spec, binding, id=spec.kernel_name(binding)) for spec in _raw_specs()
            for binding in _raw_bindings(spec)]


def _cases():
    if not backend.cupy_installed():
        return []
    cases = []
    for spec in _elementwise_specs():
        for binding in _bindings(spec, spec.build()):
            types = "-".join(binding.values())
            for layout, contiguous, index_32_bits in LAYOUTS:
                cases.append(pytest.param(spec, binding, contiguous, index_32_bits, id=f"{spec.name}-{types}-{layout}"))
    return cases


needs_nvrtc = pytest.mark.skipif(
    kernel_source.nvrtc_version() is None, reason="NVRTC cannot be loaded (pip install nvidia-cuda-nvrtc-cu12)"
)
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")

_BROKEN = kernels.KernelSpec(  # not registered: a typo ("gyy") in an otherwise valid kernel
    name="xpgrad_broken_check", in_params="T x, T gy", out_params="T gx", operation="gx = x > (T)0 ? gyy : (T)0;"
)


@needs_nvrtc
@pytest.mark.parametrize("spec, binding, contiguous, index_32_bits", _cases())
def test_kernel_compiles_with_nvrtc(spec, binding, contiguous, index_32_bits):
    source, options = _source(spec, binding, contiguous, index_32_bits)
    assert f'extern "C" __global__ void {spec.name}(' in source
    assert kernel_source.compile_cuda_source(source, options, arch=ARCH, compiler="nvrtc")


@needs_nvrtc
@pytest.mark.parametrize("spec, binding", _raw_cases())
def test_raw_kernel_compiles_with_nvrtc(spec, binding):
    source = spec.source(binding)
    assert f"#define XPGRAD_KERNEL {spec.kernel_name(binding)}" in source
    assert 'extern "C" __global__' in source and "XPGRAD_KERNEL(" in source
    assert kernel_source.compile_cuda_source(source, kernel_source.RAW_KERNEL_OPTIONS, arch=ARCH, compiler="nvrtc")


def _local_memory(report: dict) -> int:
    return report["stack_frame"] + report["spill_stores"] + report["spill_loads"]


@needs_nvrtc
@pytest.mark.parametrize("spec, binding", _raw_cases())
def test_raw_kernel_keeps_to_its_registers(spec, binding):
    """No local memory: a launch bound that asks for more blocks per SM than the kernel's registers allow makes
    ptxas spill to local memory (``__launch_bounds__(256, 8)`` caps a kernel at 32 registers)."""
    report = kernel_source.ptxas_report(spec.source(binding), kernel_source.RAW_KERNEL_OPTIONS, arch=ARCH)
    assert _local_memory(report) == 0, f"{spec.kernel_name(binding)} spills on sm_{ARCH}: {report}"


@needs_nvrtc
@pytest.mark.parametrize("spec, binding, contiguous, index_32_bits",
                         [c for c in _cases() if c.id.endswith("-flat32")])
def test_kernel_keeps_to_its_registers(spec, binding, contiguous, index_32_bits):
    source, options = _source(spec, binding, contiguous, index_32_bits)
    assert _local_memory(kernel_source.ptxas_report(source, options, arch=ARCH)) == 0


@needs_nvrtc
def test_a_kernel_held_to_too_few_registers_is_seen_to_spill():
    """The check can fail: ReLU backward's column sums need 64-80 registers; held to 32, they spill."""
    good = kernels.KERNELS["xpgrad_bias_relu_bwd"]
    assert "__launch_bounds__(XPGRAD_THREADS)" in good.code
    squeezed = kernels.RawKernelSpec(name="xpgrad_squeezed", prelude=good.prelude,
                                     code=good.code.replace("__launch_bounds__(XPGRAD_THREADS)",
                                                            "__launch_bounds__(XPGRAD_THREADS, 8)"))
    report = kernel_source.ptxas_report(squeezed.source({"T": "float32"}), kernel_source.RAW_KERNEL_OPTIONS, arch=ARCH)
    assert report["registers"] <= 32 and report["spill_stores"] > 0 and _local_memory(report) > 0


def test_raw_kernels_keep_to_their_registers_on_the_gpu(gpu_xp):
    """The same, from the kernels as the GPU's own NVRTC builds them (CUDA's function attributes)."""
    counts = {}
    for spec in _raw_specs():
        for binding in _raw_bindings(spec):
            attributes = spec.build(binding).attributes
            counts[spec.kernel_name(binding)] = (attributes["num_regs"], attributes["local_size_bytes"])
    print("registers, local bytes per thread:", counts)
    assert {name: c for name, c in counts.items() if c[1] > 0} == {}


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("spec", _raw_specs(), ids=lambda s: s.name)
def test_raw_kernel_compiles_with_nvcc(spec):
    binding = {v: kernels.TYPE_CHOICES[v][-1] for v in spec.types}
    assert kernel_source.compile_cuda_source(spec.source(binding), kernel_source.RAW_KERNEL_OPTIONS, arch=ARCH,
                                             compiler="nvcc")


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("spec", _elementwise_specs(), ids=lambda s: s.name)
def test_kernel_compiles_with_nvcc(spec):
    binding = {v: choices[-1] for v, choices in kernels.TYPE_CHOICES.items()}
    source, options = _source(spec, binding)
    assert kernel_source.compile_cuda_source(source, options, arch=ARCH, compiler="nvcc")


@needs_nvrtc
def test_every_dtype_binding_is_covered():
    ids = {c.id for c in _cases()}
    assert "xpgrad_softmax_xent_fwd-float32-int64-flat32" in ids
    assert "xpgrad_relu_bwd-float64-strided64" in ids
    assert len(ids) == sum(4 * len(list(_bindings(s, s.build()))) for s in _elementwise_specs())
    raw = {c.id for c in _raw_cases()}
    assert "xpgrad_softmax_xent_step_float64_int32" in raw
    assert {"xpgrad_sgd_update_float32", "xpgrad_momentum_update_float64", "xpgrad_adam_update_float32",
            "xpgrad_bias_relu_bwd_float64", "xpgrad_gather_batch_float32_int64"} <= raw
    assert len(raw) == sum(len(list(_raw_bindings(s))) for s in _raw_specs())
    assert len(_raw_specs()) + len(_elementwise_specs()) == len(kernels.KERNELS)


@needs_nvrtc
def test_broken_kernel_fails_nvrtc():
    source, options = _source(_BROKEN, {"T": "float32"})
    with pytest.raises(kernel_source.KernelCompileError, match="gyy"):
        kernel_source.compile_cuda_source(source, options, arch=ARCH, compiler="nvrtc")


@needs_nvrtc
def test_broken_raw_kernel_fails_nvrtc():
    good = kernels.KERNELS["xpgrad_bias_relu_fwd"]
    assert "+ b[at.col]" in good.code
    spec = kernels.RawKernelSpec(name="xpgrad_broken_raw", code=good.code.replace("+ b[at.col]", "+ bb[at.col]"),
                                 prelude=good.prelude)
    with pytest.raises(kernel_source.KernelCompileError, match="bb"):
        kernel_source.compile_cuda_source(spec.source({"T": "float32"}), kernel_source.RAW_KERNEL_OPTIONS, arch=ARCH)


@needs_nvcc
def test_broken_kernel_fails_nvcc():
    source, options = _source(_BROKEN, {"T": "float32"})
    with pytest.raises(kernel_source.KernelCompileError, match="gyy"):
        kernel_source.compile_cuda_source(source, options, arch=ARCH, compiler="nvcc")


@needs_nvrtc
def test_typed_source_binds_dtypes():
    source, _ = _source(kernels.KERNELS["xpgrad_softmax_xent_fwd"], {"T": "float64", "S": "int64"})
    assert "typedef double T;" in source and "typedef long long S;" in source
