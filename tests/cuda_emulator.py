"""Run xpgrad's raw CUDA kernels on the CPU, to check what they compute without a GPU (tests only).

A kernel's CUDA source (``RawKernelSpec.source``) is compiled as C++ with
g++, after a header that defines what CUDA provides: ``threadIdx`` and the
other built-in indices, ``__shared__`` memory (a ``static``, shared by the
block's threads), ``__syncthreads``, ``atomicInc``, ``__ldcg``, and so on.
A launch runs the blocks one after another; a block's threads are fibers
(``ucontext``) on one OS thread, run one at a time from barrier to barrier,
first to last or last to first (``thread_order``), so the results are
deterministic and a missing barrier shows up as a difference between the two
orders. Blocks can run in either order too (``block_order``), which moves the
"last block" of the kernels that sum across blocks.

Host arithmetic is not the GPU's (``exp``, ``log`` and contractions into fused
multiply-adds differ in the last bits), so results are compared with
tolerances. Every argument is checked against the kernel's parameter list:
an array's dtype must be the parameter's pointee type and a scalar's the
parameter's exact C type, as a GPU needs them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile

import numpy as np

HEADER = r"""
#include <ucontext.h>
#include <math.h>
#include <cmath>
#include <cstring>
#include <vector>
using std::exp;
using std::log;
using std::sqrt;

struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

template <class A> static inline A min(A a, A b) { return b < a ? b : a; }
template <class A> static inline A max(A a, A b) { return a < b ? b : a; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
static inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, sizeof d); return d; }
template <class A> static inline A __ldcg(const A* p) { return *p; }
static inline void __threadfence() {}
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
static inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
static inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
static inline unsigned atomicInc(unsigned* a, unsigned limit) { unsigned old = *a; *a = old >= limit ? 0 : old + 1; return old; }

namespace emu {
const size_t stack_bytes = 64 * 1024;
static void (*body)();
static ucontext_t scheduler;
static std::vector<ucontext_t> fibers;
static std::vector<char> stacks;
static std::vector<int> state;  // 0: ready, 1: waiting at a barrier, 2: finished
static int current = 0, error = 0;

static void entry() {
    body();
    state[current] = 2;
    swapcontext(&fibers[current], &scheduler);
}

// Runs one block: every ready thread in turn until it waits at a barrier or ends; then releases the barrier.
static void run_block(int threads, int reverse) {
    fibers.assign(threads, ucontext_t());
    stacks.resize((size_t)threads * stack_bytes);
    state.assign(threads, 0);
    for (int i = 0; i < threads; ++i) {
        getcontext(&fibers[i]);
        fibers[i].uc_stack.ss_sp = &stacks[(size_t)i * stack_bytes];
        fibers[i].uc_stack.ss_size = stack_bytes;
        fibers[i].uc_link = &scheduler;
        makecontext(&fibers[i], entry, 0);
    }
    for (;;) {
        for (int j = 0; j < threads; ++j) {
            const int i = reverse ? threads - 1 - j : j;
            if (state[i] == 0) {
                current = i;
                threadIdx.x = i;
                swapcontext(&scheduler, &fibers[i]);
            }
        }
        int waiting = 0, done = 0;
        for (int s : state) { waiting += s == 1; done += s == 2; }
        if (waiting == 0) return;
        if (done) { error = 1; return; }  // some threads ended while others wait at a barrier
        for (int& s : state) s = 0;
    }
}
}  // namespace emu

static inline void __syncthreads() {
    emu::state[emu::current] = 1;
    swapcontext(&emu::fibers[emu::current], &emu::scheduler);
}
"""

LAUNCHER = r"""
{statics}
static void emu_call() {{ XPGRAD_KERNEL({names}); }}

extern "C" int emu_launch(unsigned grid, unsigned block, int reverse_threads, int reverse_blocks, {params}) {{
    gridDim = emu_dim3{{grid, 1, 1}};
    blockDim = emu_dim3{{block, 1, 1}};
    blockIdx = emu_dim3{{0, 0, 0}};
    emu::error = 0;
    {store}
    emu::body = emu_call;
    for (unsigned j = 0; j < grid; ++j) {{
        blockIdx.x = reverse_blocks ? grid - 1 - j : j;
        emu::run_block((int)block, reverse_threads);
        if (emu::error) return 1;
    }}
    return 0;
}}
"""

_C_DTYPES = {"float": "float32", "double": "float64", "int": "int32", "long long": "int64",
             "unsigned int": "uint32", "unsigned char": "uint8"}
_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "double": ctypes.c_double, "float": ctypes.c_float}


def parameters(source: str) -> list[tuple[str, str, bool]]:
    """(C type of the value or pointee, name, is a pointer) for each parameter of the source's kernel."""
    typedefs = dict((name, ctype) for ctype, name in re.findall(r"typedef ([\w ]+?) (\w+);", source))
    match = re.search(r"XPGRAD_KERNEL\(([^)]*)\)\s*\{", source)
    params = []
    for text in match.group(1).split(","):
        words = text.replace("*", " * ").replace("__restrict__", "").replace("const", "").split()
        name, pointer = words[-1], "*" in words
        ctype = " ".join(w for w in words[:-1] if w != "*")
        params.append((typedefs.get(ctype, ctype), name, pointer))
    return params


class EmulatedKernel:
    """A stand-in for ``cupy.RawKernel``: ``kernel((grid,), (block,), args)`` runs it on NumPy arrays."""

    thread_order = "forward"
    block_order = "forward"

    def __init__(self, code: str, name: str, build_dir: str):
        self.name, self.params = name, parameters(code)
        types = [f"{ctype}*" if pointer else ctype for ctype, _, pointer in self.params]
        names = [name for _, name, _ in self.params]
        launcher = LAUNCHER.format(
            statics="\n".join(f"static {t} emu_arg_{n};" for t, n in zip(types, names)),
            names=", ".join(f"emu_arg_{n}" for n in names),
            params=", ".join(f"{'void*' if '*' in t else t} {n}" for t, n in zip(types, names)),
            store=" ".join(f"emu_arg_{n} = ({t}){n};" for t, n in zip(types, names)))
        source = HEADER + code + launcher
        self._lib = ctypes.CDLL(_compile(source, build_dir))
        self._fn = self._lib.emu_launch
        self._fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int, ctypes.c_int] + [
            ctypes.c_void_p if pointer else _CTYPES[ctype] for ctype, _, pointer in self.params]

    def __call__(self, grid, block, args, shared_mem=0):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        converted = [self._convert(a, p) for a, p in zip(args, self.params)]
        code = self._fn(int(grid[0]), int(block[0]), self.thread_order == "reverse",
                        self.block_order == "reverse", *converted)
        if code:
            raise RuntimeError(f"{self.name}: threads of a block ended while others waited at __syncthreads")

    def _convert(self, value, param):
        ctype, name, pointer = param
        want = np.dtype(_C_DTYPES[ctype])
        if pointer:
            if not isinstance(value, np.ndarray) or value.dtype != want or not value.flags.c_contiguous:
                raise TypeError(f"{self.name}: {name} must be a C-contiguous {want} array, got {_describe(value)}")
            return value.ctypes.data
        if not isinstance(value, np.generic) or value.dtype != want:
            raise TypeError(f"{self.name}: {name} must be a NumPy {want} scalar, got {_describe(value)}")
        return value.item()


def _describe(value) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__


def _compile(source: str, build_dir: str) -> str:
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    library = os.path.join(build_dir, f"kernel-{digest}.so")
    if not os.path.exists(library):
        with tempfile.NamedTemporaryFile("w", suffix=".cpp", dir=build_dir, delete=False) as f:
            f.write(source)
        result = subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-Wno-unknown-pragmas",
                                 "-o", library, f.name], capture_output=True, text=True)
        os.unlink(f.name)
        if result.returncode:
            raise RuntimeError(f"g++ could not compile the emulated kernel:\n{result.stderr[-4000:]}")
    return library
