"""Weight sync into a vLLM engine core running in another process, through shared memory.

The learner packs every tensor into one POSIX shared-memory block; only names, dtypes,
shapes and offsets cross the engine's RPC socket. The worker maps the block and loads
straight out of it (``rollouts.inplace_sync``: packed into the GEMM kernels, copied into the
other parameters; no staging copy), or, where that path does not apply, through vLLM's reload.
"""

from __future__ import annotations

from collections.abc import Iterable
from multiprocessing.shared_memory import SharedMemory

import torch

Meta = list[tuple[str, str, tuple[int, ...], int, int]]  # name, dtype, shape, offset, nbytes


class ShmWeightLoader:
    """vLLM worker extension (``worker_extension_cls``): a worker method callable by name over
    the engine's RPC socket, so nothing but strings, shapes and offsets is serialised (vLLM
    refuses to pickle functions unless VLLM_ALLOW_INSECURE_SERIALIZATION is set)."""

    def load_weights_from_shm(self, shm_name: str, meta: Meta) -> str:
        # The engine core is a multiprocessing child, so it shares the learner's resource tracker:
        # attaching re-registers the name (a set; no-op) and the learner's unlink unregisters it
        # once. (Unregistering here too made the tracker raise KeyError on that unlink.)
        shm = SharedMemory(name=shm_name)
        try:
            buf = torch.frombuffer(shm.buf, dtype=torch.uint8)
            views = [(name, buf[off : off + nbytes].view(getattr(torch, dtype)).view(shape))
                     for name, dtype, shape, off, nbytes in meta]
            del buf
            from rollouts.inplace_sync import load_on_worker
            from rollouts.tied_head import refresh_tied_heads

            fast = load_on_worker(self, views)  # packs/copies out of the block; keeps no view
            if not fast:  # vLLM's general loader: owned copies, the block is unmapped below
                self.reload_weights(weights_iterator=iter([(name, t.clone()) for name, t in views]))
            del views
            refresh_tied_heads(self.model_runner.model)  # a tied head's packed GEMM is stale otherwise
            return "in-place" if fast else "vllm-reload"
        finally:
            shm.close()


WORKER_EXTENSION = f"{__name__}.{ShmWeightLoader.__qualname__}"


def send_weights_via_shm(llm, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Pack, send, load; returns the worker's load path ("in-place" or "vllm-reload")."""
    tensors = [(name, t.detach().contiguous().cpu()) for name, t in named_tensors]
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    shm = SharedMemory(create=True, size=max(total, 1))
    try:
        buf = torch.frombuffer(shm.buf, dtype=torch.uint8)
        meta: Meta = []
        offset = 0
        for name, t in tensors:
            nbytes = t.numel() * t.element_size()
            buf[offset : offset + nbytes].copy_(t.reshape(-1).view(torch.uint8))
            meta.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, nbytes))
            offset += nbytes
        del buf
        return llm.collective_rpc("load_weights_from_shm", args=(shm.name, [list(m) for m in meta]))[0]
    finally:
        shm.close()
        shm.unlink()
