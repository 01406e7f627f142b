"""Where a run's model comes from: a local Hugging Face directory or a hub id, checked before loading.

``resolve_model`` returns a local directory that holds a config, weights and a tokenizer, or
raises one `NotFoundError` (a FileNotFoundError) naming what is missing, so a bad ``model``
never surfaces as a transformers traceback (missing weights) or a misleading hint (a
tokenizer-less directory makes transformers suggest installing sentencepiece).
"""

from __future__ import annotations

import re
from pathlib import Path

from rlvr.errors import NotFoundError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_dir(path: str | Path, field: str = "model") -> None:
    """Raise NotFoundError (a FileNotFoundError) naming the first thing a model directory lacks."""
    p = Path(path)
    if not p.is_dir():
        raise NotFoundError(f"{field}: no such directory {str(path)!r} (run `rlvr pretrain` first?)")
    if not (p / "config.json").is_file():
        raise NotFoundError(f"{field}: {str(path)!r} is not a Hugging Face model directory (no config.json)")
    if not any((p / f).is_file() for f in WEIGHT_FILES) and not list(p.glob("*.safetensors")):
        raise NotFoundError(f"{field}: {str(path)!r} has no weights (none of {', '.join(WEIGHT_FILES)})")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise NotFoundError(f"{field}: {str(path)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                            "save one beside the weights with tokenizer.save_pretrained(DIR)")


def resolve_model(name: str, field: str = "model") -> str:
    """A checked local directory for ``name``: itself if it is a path, else a hub id fetched through
    the hub's own client and cache (offline: the cached copy, or an error saying how to point at one)."""
    p = Path(name)
    if p.exists() or not _HUB_ID.match(name):
        check_model_dir(p, field)
        return str(p)
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=name)
    except Exception as exc:  # offline, unknown id, gated model: one line, with the way out
        raise NotFoundError(
            f"{field}: {name!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}). Download it where the "
            f"hub is reachable (`huggingface-cli download {name} --local-dir DIR`) and set {field}=DIR") from None
    check_model_dir(local, field)
    return local


def context_length(model_dir: str) -> int | None:
    """The model's longest sequence (``max_position_embeddings``), if its config says."""
    import json

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    text_cfg = cfg.get("text_config", cfg)
    value = text_cfg.get("max_position_embeddings")
    return int(value) if value else None
