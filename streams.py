"""Concurrent micro-batch streams for CPU training: one process, one intra-op thread per stream.

Why: at the demo's size an op on 16 clips is too short to split well over OpenMP threads (every op
ends at a barrier where one thread waits for the other), so two 1-thread processes under torchrun
trained faster than one 2-thread process (docs/experiments.md, row 10). Streams
get that overlap inside the one `python main.py` process: each of `streams` Python threads runs the
forward and backward of its slice of the batch with one intra-op thread (torch releases the GIL
inside every kernel and the autograd engine runs a CPU backward on the calling thread). Each stream
takes its gradients with `torch.autograd.grad`, so no stream writes a shared `.grad`; they are
summed in slice order afterwards. The step is deterministic and equals the one-stream step to float
rounding (tests/test_streams.py).

Not for DDP (its reducer hooks `.grad` accumulation; use torchrun's ranks instead), CUDA (one
device queue) or BatchNorm (running statistics would be written by two threads).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from diffusion.objective import LossTerms


def split_evenly(n: int, parts: int) -> list[slice]:
    """`parts` contiguous slices covering range(n), sizes differing by at most one."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


class StreamedBackward:
    """backward(loss_fn, batch_size, scale): gradients of scale * (batch loss) into `.grad`.

    loss_fn(part: slice) -> LossTerms of that slice (loss = its mean loss); the batch loss is the
    size-weighted mean of the slices' losses, which is what one call on the whole batch returns.
    With streams == 1 this is exactly `(loss_fn(all).loss * scale).backward()`.
    """

    def __init__(self, model: torch.nn.Module, streams: int, serial_calls: int = 0):
        """serial_calls: run the slices of the first this many calls one after the other (still in the
        stream threads, so with their thread settings), e.g. while compiled regions compile."""
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.streams, self.serial_calls = streams, serial_calls
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pool = ThreadPoolExecutor(streams, thread_name_prefix="stream") if streams > 1 else None

    def __call__(self, loss_fn: Callable[[slice], LossTerms], batch_size: int, scale: float = 1.0) -> LossTerms:
        if self.pool is None:
            result = loss_fn(slice(0, batch_size))
            (result.loss * scale).backward()
            return result
        main_threads = torch.get_num_threads()

        def run(part: slice) -> tuple[LossTerms, float, tuple]:
            # Per calling thread for OpenMP; the MKL part of this setting is global and is restored
            # below, once every stream has finished.
            torch.set_num_threads(1)
            result = loss_fn(part)
            share = (part.stop - part.start) / batch_size
            grads = torch.autograd.grad(result.loss * (share * scale), self.params, allow_unused=True)
            return result, share, grads

        parts = split_evenly(batch_size, self.streams)
        try:
            if self.serial_calls > 0:
                self.serial_calls -= 1
                outs = [self.pool.submit(run, part).result() for part in parts]
            else:
                outs = list(self.pool.map(run, parts))
        finally:
            torch.set_num_threads(main_threads)
        with torch.no_grad():
            for i, p in enumerate(self.params):
                parts = [grads[i] for _, _, grads in outs if grads[i] is not None]
                if not parts:
                    continue
                # In the parameter's own layout: autograd.grad returns conv-weight gradients in
                # channels-last strides, and the fused AdamW kernel pairs param and grad element by
                # element in memory, so a foreign layout silently scrambles the update (it did).
                total = torch.empty_like(p).copy_(parts[0])
                for g in parts[1:]:
                    total.add_(g)
                if p.grad is None:
                    p.grad = total
                else:
                    p.grad.add_(total)
        return LossTerms.merge([r for r, _, _ in outs], [share for _, share, _ in outs])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
