"""Environments: one file per kind behind a registry (``ENVS``); an episode is token-in/token-out.

``make_env(cfg, encode)`` builds one environment (it runs one episode at a time: build one per
episode of a group); ``env_config_union()`` is the ``env:`` section's type, a union of the
registered kinds' configs keyed on ``kind`` (default ``single_turn``). Built-in kinds:
``single_turn`` (the one-turn case: the prompt, one model turn), ``guess_number`` (a feedback
game), ``python`` (the code sandbox as a tool) and ``openenv`` (any OpenEnv server). A new kind is a module in this package that calls ``register_env`` (imported here by name
scan). The episode record is ``rlvr.envs.trajectory``; see docs/environments.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any, Union

from rlvr.envs.base import ENVS, Encode, Env, EnvBase, EnvKind, Observation, hf_encoder, register_env
from rlvr.envs.episode import take_turn
from rlvr.envs.trajectory import Budget, Trajectory

for _mod in pkgutil.iter_modules(__path__):  # every kind registers itself on import
    if _mod.name not in ("base", "episode", "runner", "tool_calls", "trajectory"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ENVS", "Budget", "Encode", "Env", "EnvBase", "EnvConfig", "EnvKind", "Observation", "Trajectory",
           "env_config_union", "hf_encoder", "make_env", "register_env", "take_turn"]


def _env_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "single_turn")
    return getattr(value, "kind", "single_turn")


def env_config_union() -> Any:
    """The ``env:`` section's type: a union of the registered kinds' configs, keyed on ``kind``
    (default single_turn). Built when called, so kinds registered by then are members."""
    from pydantic import Discriminator, Tag

    members = tuple(Annotated[kind.config, Tag(name)] for name, kind in sorted(ENVS.items()))
    return Annotated[Union[members], Discriminator(_env_kind)]  # noqa: UP007 (a runtime-built union)


EnvConfig = env_config_union()  # the built-in kinds (and any module of this package): TrainConfig.env


def make_env(cfg: EnvBase, encode: Encode) -> Env:
    """One environment of ``cfg.kind`` (a KeyError naming the known kinds for an unknown one)."""
    if cfg.kind not in ENVS:
        raise KeyError(f"env.kind: unknown {cfg.kind!r}; known: {sorted(ENVS)}")
    return ENVS[cfg.kind].build(cfg, encode)
