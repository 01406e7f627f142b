"""What runs inside the reward model's worker process: load the model once, score batches of texts.

Imported (with torch and transformers) by the worker pool's zygote, never by the trainer's process.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

_LOADED: dict[tuple, tuple[Any, Any]] = {}


def _load(spec: dict[str, Any]) -> tuple[Any, Any]:
    key = (spec["model"], spec["device"], spec["dtype"])
    if key not in _LOADED:
        # this process is the reward model's alone: its thread budget does not touch the learner's
        torch.set_num_threads(spec["threads"])
        tokenizer = AutoTokenizer.from_pretrained(spec["model"])
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.truncation_side = "left"  # a text over max_length loses its start, never the reply's end
        model = AutoModelForSequenceClassification.from_pretrained(spec["model"], dtype=getattr(torch, spec["dtype"]))
        if model.config.pad_token_id is None:  # batched pooling finds each row's last token by the pad id
            model.config.pad_token_id = tokenizer.pad_token_id
        _LOADED[key] = (tokenizer, model.to(spec["device"]).eval())
    return _LOADED[key]


def _text(tokenizer: Any, mode: str, prompt_text: str, question: str, completion: str) -> str:
    if mode == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": question},
                                              {"role": "assistant", "content": completion}], tokenize=False)
    return (prompt_text or question) + completion


def score_texts(spec: dict[str, Any], items: list[tuple[str, str, str]]) -> list[float]:
    """The reward of each ``(prompt_text, question, completion)``: the logit of ``spec["label"]`` (a
    one-label head: its only logit), or its probability (``output: prob``: sigmoid of a one-label head,
    else the softmax over the labels)."""
    tokenizer, model = _load(spec)
    mode = spec["input"]
    if mode == "auto":
        mode = "chat" if getattr(tokenizer, "chat_template", None) else "text"
    texts = [_text(tokenizer, mode, *item) for item in items]
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=spec["max_length"],
                      add_special_tokens=mode != "chat")  # a chat template writes its own
    with torch.inference_mode():
        logits = model(**batch.to(spec["device"])).logits.float()  # [B, num_labels]
    label = spec["label"] if spec["label"] is not None else 0
    if label >= logits.shape[-1]:
        raise ValueError(f"label {label} but the reward model has {logits.shape[-1]} labels")
    if spec["output"] == "prob":
        probs = logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)
        return probs[:, label].tolist()
    return logits[:, label].tolist()
