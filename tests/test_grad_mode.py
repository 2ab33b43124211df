"""Issue 20, class D: grad mode is per thread, as PyTorch's, and leaving ``no_grad`` restores exactly the mode
before it, by an exception too."""

import threading

import numpy as np
import pytest

from xpgrad import Tensor, grad_mode, no_grad
from xpgrad.tensor import is_grad_enabled


def records() -> bool:
    """Whether an operation run now, in this thread, is recorded."""
    return (Tensor(np.ones(2), requires_grad=True) * 2).requires_grad


def assert_all_threads_record():
    assert is_grad_enabled() and records()
    assert grad_mode.grad_enabled is True and grad_mode._threads_without_grad == 0  # the fast path is back


class Stepped:
    """A generator function run in a thread of its own, one ``yield`` at a time: ``paused()`` waits until it
    reaches the next one, ``resume()`` lets it go on. It reports what it sees to ``self.seen``."""

    def __init__(self, steps):
        self.go, self.here, self.seen = threading.Event(), threading.Event(), []
        self.thread = threading.Thread(target=self._run, args=(steps,))
        self.thread.start()

    def _run(self, steps):
        for _ in steps(self.seen.append):
            self.here.set()
            self.go.wait()
            self.go.clear()
        self.here.set()

    def paused(self):
        assert self.here.wait(10)
        self.here.clear()

    def resume(self):
        self.go.set()


def test_two_threads_whose_blocks_end_out_of_order_leave_recording_on():
    """The issue's case: thread A enters no_grad, then B, then A leaves before B. Each sees only its own mode."""
    def a(report):
        with no_grad():
            report(("A inside", is_grad_enabled(), records()))
            yield
        report(("A after", is_grad_enabled(), records()))
        yield

    def b(report):
        with no_grad():
            report(("B inside", is_grad_enabled(), records()))
            yield
            report(("B inside, A gone", is_grad_enabled(), records()))
        report(("B after", is_grad_enabled(), records()))
        yield

    thread_a = Stepped(a)
    thread_a.paused()
    thread_b = Stepped(b)
    thread_b.paused()
    main = records()  # both threads inside their blocks: this one still records
    thread_a.resume()  # A leaves first
    thread_a.paused()
    thread_b.resume()  # then B
    thread_b.paused()
    for thread in (thread_a, thread_b):
        thread.resume()
        thread.thread.join()
    assert main
    assert thread_a.seen == [("A inside", False, False), ("A after", True, True)]
    assert thread_b.seen == [("B inside", False, False), ("B inside, A gone", False, False), ("B after", True, True)]
    assert_all_threads_record()


def test_one_threads_no_grad_never_reaches_another():
    inside, release, results = threading.Event(), threading.Event(), {}

    def evaluate():
        with no_grad():
            inside.set()
            release.wait()
            results["worker"] = records()

    worker = threading.Thread(target=evaluate)
    worker.start()
    inside.wait()
    results["main while the worker is inside"] = records()
    release.set()
    worker.join()
    assert results == {"worker": False, "main while the worker is inside": True}
    assert_all_threads_record()


def test_many_threads_entering_and_leaving_at_once():
    errors, barrier = [], threading.Barrier(8)

    def work(i):
        barrier.wait()
        for k in range(200):
            nested = (i + k) % 3
            with no_grad():
                if nested:
                    with no_grad():
                        ok = not records()
                else:
                    ok = not records()
                ok = ok and not is_grad_enabled()
            if not (ok and records()):
                errors.append((i, k))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_all_threads_record()


def test_nesting_restores_exactly_the_previous_mode_exceptions_included():
    with pytest.raises(KeyError):
        with no_grad():
            with pytest.raises(ValueError):
                with no_grad():
                    raise ValueError("inner")
            assert not is_grad_enabled()  # the inner block gave back the outer one's mode, not "on"
            raise KeyError("outer")
    assert_all_threads_record()


def test_one_instance_may_be_entered_again_and_nested():
    block = no_grad()
    with block:
        with block:
            assert not records()
        assert not records()
    with block:
        assert not records()
    assert_all_threads_record()


def test_as_a_decorator_with_or_without_parentheses():
    @no_grad
    def bare(x):
        """Doubles x."""
        return x * 2

    @no_grad()
    def called(x):
        if x.data.sum() > 100:
            raise ArithmeticError("too big")
        return x * 2

    x = Tensor(np.ones(2), requires_grad=True)
    assert not bare(x).requires_grad and not called(x).requires_grad
    assert bare.__name__ == "bare" and bare.__doc__ == "Doubles x."
    with pytest.raises(ArithmeticError):
        called(Tensor(np.full(2, 100.0), requires_grad=True))
    assert_all_threads_record()


def test_what_it_cannot_decorate_is_refused():
    def generator():
        yield 1

    async def coroutine():
        return 1

    for fn in (generator, coroutine):
        with pytest.raises(TypeError, match=rf"no_grad cannot decorate {fn.__name__}, a generator or coroutine"):
            no_grad(fn)
    with pytest.raises(TypeError, match="no_grad\\(\\) takes no arguments, or decorates a function; got bool"):
        no_grad(True)
    with pytest.raises(TypeError, match="got type"):
        no_grad()(int)
