"""Weight sync into a vLLM engine core running in another process, through shared memory.

The learner packs every tensor into one POSIX shared-memory block; only names, dtypes,
shapes and offsets cross the engine's RPC socket. The worker maps the block, copies the
tensors out and reloads them in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import torch

Meta = list[tuple[str, str, tuple[int, ...], int, int]]  # name, dtype, shape, offset, nbytes


def _load_from_shm(worker, shm_name: str, meta: Meta) -> None:
    """Runs inside the engine's worker process (``self`` is the worker)."""
    shm = SharedMemory(name=shm_name)
    # Attaching registers the block with this process's resource tracker, which would try to
    # unlink it at exit; the learner owns it.
    resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
    try:
        buf = torch.frombuffer(shm.buf, dtype=torch.uint8)
        weights = [(name, buf[off : off + nbytes].view(getattr(torch, dtype)).view(shape).clone())
                   for name, dtype, shape, off, nbytes in meta]
        del buf
        worker.reload_weights(weights_iterator=iter(weights))
    finally:
        shm.close()


def send_weights_via_shm(llm, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
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
        llm.collective_rpc(_load_from_shm, args=(shm.name, meta))
    finally:
        shm.close()
        shm.unlink()
