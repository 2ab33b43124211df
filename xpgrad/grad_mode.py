"""Grad mode: whether operations are recorded for a backward pass, per thread, as PyTorch's.

Every operation asks whether to record (:class:`xpgrad.tensor.Function`), so
the answer must cost almost nothing: ``grad_enabled`` (a module global) is
True while no thread is inside :class:`no_grad`, and only while some thread
is does an operation look up its own thread's mode in ``local``. So one
thread's ``no_grad`` never reaches another, and a process that never uses
threads pays one global read per operation.
"""

from __future__ import annotations

import functools
import inspect
import threading

#: True while no thread has grad mode off; when False, ``local.enabled`` is the calling thread's mode.
grad_enabled = True


class _ThreadMode(threading.local):
    enabled = True  # a class default: reading it raises nothing in a thread that never set it

    def __init__(self):
        self.stack = []  # the modes no_grad blocks replaced, innermost last


local = _ThreadMode()
_lock = threading.Lock()
_threads_without_grad = 0


def _set_grad_enabled(mode: bool) -> bool:
    """Set this thread's grad mode; returns the previous one."""
    global grad_enabled, _threads_without_grad
    previous = local.enabled
    if mode != previous:
        with _lock:
            local.enabled = mode
            _threads_without_grad += -1 if mode else 1
            grad_enabled = _threads_without_grad == 0
    return previous


def is_grad_enabled() -> bool:
    """Whether this thread records operations (False inside :class:`no_grad`)."""
    return grad_enabled or local.enabled


class no_grad:
    """``with no_grad(): ...`` runs the block without recording a graph; ``@no_grad()`` (or ``@no_grad``)
    does the same for every call of a function.

    Inside it, results have ``requires_grad=False`` and keep nothing alive for
    a backward pass: use it for evaluation and for updates made by hand. As
    PyTorch's, the mode is per thread: one thread's block never affects
    another, and leaving a block (by an exception too) restores exactly the
    mode before it. A generator or coroutine function cannot be decorated (its
    body would run after the call returned): use the ``with`` form inside it.
    """

    def __new__(cls, func=None):
        self = super().__new__(cls)
        if func is None:
            return self
        return self(func)

    def __enter__(self):
        local.stack.append(_set_grad_enabled(False))

    def __exit__(self, *exc_info):
        _set_grad_enabled(local.stack.pop())

    def __call__(self, func):
        if not callable(func) or isinstance(func, type):
            raise TypeError(f"no_grad() takes no arguments, or decorates a function; got {type(func).__name__} "
                            f"{func!r:.60}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func) or inspect.iscoroutinefunction(func):
            raise TypeError(f"no_grad cannot decorate {func.__name__}, a generator or coroutine function: its body "
                            "runs after the call returns; write `with no_grad():` inside it instead")

        @functools.wraps(func)
        def without_grad(*args, **kwargs):
            with no_grad():
                return func(*args, **kwargs)
        return without_grad
