"""Rollout engines: group sampling with token ids, log-probs and finish reasons.

Usable on its own (no dependency on `rlvr` or `verifiers`). Engines are chosen through one registry
(``rollouts.config.ENGINES``): a per-kind config with its own fields, capabilities and ``build()``.
"""

from rollouts.base import EngineBase
from rollouts.config import ENGINES, EngineConfigBase, engine_class, engine_config, register_engine
from rollouts.types import Completion, Engine, Group, OnGroup, Prompt, SamplingConfig

__all__ = ["SamplingConfig", "Completion", "Group", "Engine", "EngineBase", "Prompt", "OnGroup", "make_engine",
           "ENGINES", "EngineConfigBase", "engine_config", "register_engine"]


def make_engine(kind: str, model_dir: str, **kwargs):
    """The engine of registered ``kind`` on ``model_dir``, with its constructor's ``kwargs`` as given
    (``"hf"``, ``"hf-generate"``, ``"vllm"``, ``"static"``, or a plugin's; see rollouts.config)."""
    return engine_class(kind)(model_dir, **kwargs)
