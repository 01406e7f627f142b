"""Verifier registry: built-ins, ``@register`` and Python entry points (group ``rlvr.verifiers``).

A plugin package declares, in its pyproject::

    [project.entry-points."rlvr.verifiers"]
    my-checker = "my_pkg.module:MyVerifier"

and ``verifiers.get("my-checker")`` then works with no code change. The entry point names a
class or factory; ``get`` calls it with the keyword arguments it was given. rlvr itself declares
``reward_model`` this way (it needs torch, which this package never imports), and registers it with
``register`` when ``rlvr`` is imported, so it is found even where the installed metadata predates it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from verifiers.base import Verifier

ENTRY_POINT_GROUP = "rlvr.verifiers"

# Built-ins are imported lazily so `import verifiers` stays cheap (no sympy until asked).
_BUILTINS: dict[str, str] = {
    "arith": "verifiers.arith:ArithVerifier",
    "r1_format": "verifiers.format:R1FormatVerifier",
    "countdown": "verifiers.countdown:CountdownVerifier",
    "guess_number": "verifiers.guess_number:GuessNumberVerifier",
    # the environment's own per-step rewards, summed over the episode (rlvr.scoring puts them in the row)
    "env_reward": "verifiers.env_reward:EnvRewardVerifier",
    "math": "verifiers.math:MathVerifier",
    "code": "verifiers.code:CodeVerifier",
    # reasoning-gym's own scorers (the package is imported only inside the verifier's workers)
    "reasoning_gym": "verifiers.reasoning_gym:ReasoningGymVerifier",
    # an LLM judge behind an OpenAI-compatible endpoint (stdlib HTTP)
    "judge": "verifiers.judge:JudgeVerifier",
    # Optional (needs `pip install math-verify`): the reference checker, for audits.
    "math_verify": "verifiers.math.mathverify:MathVerifyVerifier",
}
_REGISTERED: dict[str, Callable[..., Verifier]] = {}


def register(name: str) -> Callable[[Callable[..., Verifier]], Callable[..., Verifier]]:
    """Decorator: register a verifier class or factory under ``name``."""

    def deco(factory: Callable[..., Verifier]) -> Callable[..., Verifier]:
        if name in _REGISTERED and _REGISTERED[name] is not factory:
            raise ValueError(f"verifier {name!r} is already registered")
        _REGISTERED[name] = factory
        return factory

    return deco


def _load(target: str) -> Callable[..., Verifier]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _plugins(strict: bool = True) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if strict and ep.name in found and found[ep.name].value != ep.value:
            raise ImportError(
                f"two installed plugins register verifier {ep.name!r}: {found[ep.name].value} and {ep.value}"
            )
        found[ep.name] = ep
    return found


def available() -> list[str]:
    """Names ``get`` accepts: built-ins, registered and installed plugins."""
    return sorted(set(_BUILTINS) | set(_REGISTERED) | set(_plugins(strict=False)))


def factory_of(name: str) -> Callable[..., Verifier]:
    """The class or factory registered as ``name`` (not instantiated); KeyError if unknown."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTINS:
        return _load(_BUILTINS[name])
    plugins = _plugins()
    if name not in plugins:
        raise KeyError(f"unknown verifier {name!r}; available: {', '.join(available())}")
    try:
        return plugins[name].load()
    except Exception as exc:
        raise ImportError(f"verifier plugin {name!r} ({plugins[name].value}) failed to load: {exc}") from exc


def get(name: str, /, **kwargs: Any) -> Verifier:
    """Instantiate the verifier called ``name`` (kwargs go to its constructor; a ``name`` among them too,
    as the judge and the reward model take one to appear under another name in a rubric)."""
    verifier = factory_of(name)(**kwargs)
    if not isinstance(verifier, Verifier):  # checked here so a bad plugin fails loudly, once
        raise TypeError(f"verifier {name!r} does not implement score(completion, task) and name")
    return verifier
