"""LoRA through ``peft``: the learner trains an adapter; the engine samples with merged weights.

Config shape: a top-level ``lora:`` section (``r``, ``alpha``, ``dropout``, ``target_modules``)
beside ``model: PATH``, rather than ``model.lora``: ``model`` stays one string (a directory or
a hub id) in every config, override (``model=DIR``) and stage, and LoRA is a property of how
the run trains that model, like ``optim`` or ``train.dtype``.

Weight sync: for every adapted layer the engine gets ``W + scale * B @ A`` computed into a new
tensor (``merged_named_tensors``); the trained adapter and the frozen base are never modified,
so the optimizer's view of the model never changes. Checkpoints hold the adapter (the base is
the run's ``model``); the run's final directory holds the merged model, a plain HF model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ADAPTER = "default"


def require_peft():
    try:
        import peft
    except ImportError as exc:
        from rlvr.errors import MissingPackageError

        raise MissingPackageError("lora: needs the `peft` package; install the extra: pip install -e '.[lora]'") from exc
    return peft


def _linear_layers(model) -> list[str]:
    """Names of the layers LoRA adapts as linear maps: ``nn.Linear`` and GPT-2's ``Conv1D``."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def check_targets(model_dir: str, target_modules: list[str] | str) -> list[str]:
    """The module names ``target_modules`` matches in the model at ``model_dir``, built on the meta
    device (no weights read). A list matches as peft does (a name, or a dotted suffix of one);
    every name of it that matches no linear layer is an error naming it and listing the model's
    linear layer names (peft itself would adapt the names that match and drop the others silently)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr.config import ConfigError

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = _linear_layers(model)
    short = ", ".join(sorted({n.split(".")[-1] for n in linear}))
    if isinstance(target_modules, str):  # peft: a string is a regex over the full name ("all-linear" is special)
        import re

        if target_modules == "all-linear":
            return [n for n in linear if not n.endswith("lm_head")]
        hits = [n for n in linear if re.fullmatch(target_modules, n)]
        if not hits:
            raise ConfigError(f"lora.target_modules: {target_modules!r} matches no linear layer of {model_dir!r}; "
                              f"its linear layers are named: {short}")
        return hits

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in target_modules if not any(matches(n, t) for n in linear)]
    if unmatched:
        verb = "matches" if len(unmatched) == 1 else "match"
        raise ConfigError(f"lora.target_modules: {unmatched!r} {verb} no linear layer of {model_dir!r}; "
                          f"its linear layers are named: {short}")
    return [n for n in linear if any(matches(n, t) for t in target_modules)]


def wrap(model, r: int, alpha: float, dropout: float, target_modules: list[str] | str):
    """``model`` with a fresh LoRA adapter (only the adapter trains)."""
    peft = require_peft()
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                          task_type="CAUSAL_LM")
    return peft.get_peft_model(model, cfg, adapter_name=ADAPTER)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


@torch.no_grad()
def merged_named_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of the merged model, adapter untouched: adapted weights are fresh
    ``W + delta`` tensors, every other tensor is the base's own (read-only use)."""
    if not is_lora(model):
        yield from model.named_parameters()
        return
    inner = model.get_base_model()
    modules = dict(inner.named_modules())
    for name, param in inner.named_parameters():
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            owner = modules[name.split(".base_layer.")[0]]
            clean = name.replace(".base_layer.", ".")
            if name.endswith(".weight") and ADAPTER in getattr(owner, "lora_A", {}) \
                    and ADAPTER not in getattr(owner, "merged_adapters", []):
                yield clean, param + owner.get_delta_weight(ADAPTER).to(param.dtype)
            else:
                yield clean, param
        else:
            yield name, param


def adapter_state(model) -> dict[str, torch.Tensor]:
    peft = require_peft()
    return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    peft = require_peft()
    result = peft.set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        from rlvr.config import ConfigError

        raise ConfigError(f"resume: the checkpoint's adapter has keys the model does not have: {unexpected[:5]}")


def save_merged(model, out_dir: str | Path, tokenizer: Any = None) -> None:
    """A plain HF model directory with the adapter merged in (the trained model is not changed)."""
    import copy

    merged = copy.deepcopy(model).merge_and_unload() if is_lora(model) else model
    merged.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
