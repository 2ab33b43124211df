"""A training step built with the tape, recorded as a CUDA graph and replayed (GPU only).

A capture fails if the step syncs with the host or allocates outside CuPy's
memory pool, so a successful capture whose replays reproduce the eager steps
shows the tape's step is free of both.
"""

import numpy as np

from xpgrad import Tensor, backend, functional, nn, optim


def test_a_tape_step_replays_as_a_cuda_graph(gpu_xp, rng):
    cp = gpu_xp
    model = nn.Sequential(nn.Linear(20, 16, rng=0), nn.ReLU(), nn.Linear(16, 5, rng=1)).to("cuda")
    x = Tensor(cp.asarray(rng.normal(size=(32, 20)).astype(np.float32)))
    t = cp.asarray(rng.integers(0, 5, size=32).astype(np.int32))
    # SGD: a constant learning rate, which a captured graph replays as recorded.
    opt = optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    losses = []

    def step():
        opt.zero_grad()
        loss = functional.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss)  # keeps the last loss's memory alive, as a training loop would read it

    def reset(values):
        for p, v in zip(params, values):
            p.data[...] = v
        cp.cuda.Device().synchronize()

    start = [p.data.copy() for p in params]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(3):  # compile the kernels; fill the pool for this stream
            step()
    stream.synchronize()
    reset(start)
    with stream:
        for _ in range(3):
            step()
    stream.synchronize()
    eager = [backend.to_numpy(p.data) for p in params]

    reset(start)
    graph = backend.capture_graph(step, stream)
    cp.cuda.Device().synchronize()
    for p, s in zip(params, start):  # recording runs nothing
        np.testing.assert_array_equal(backend.to_numpy(p.data), backend.to_numpy(s))
    for _ in range(3):
        graph.launch(stream)
    stream.synchronize()
    for p, e in zip(params, eager):
        np.testing.assert_allclose(backend.to_numpy(p.data), e, rtol=1e-6, atol=1e-7)
    assert not np.allclose(eager[0], backend.to_numpy(start[0]))  # the steps did move the weights
