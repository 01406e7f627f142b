"""Stage 0 → 1: random init → pretraining of a tiny base model, saved in Hugging Face format.

The corpus is procedural and comes from the task registry: ``TASKS[cfg.task.kind].corpus``
builds R1-Zero prompts for *training-split* problems followed by a mix of careful (correct)
and careless (close but wrong) responses, so the base model can solve the task when it
samples the careful mode but greedy decoding often picks the careless one: pass@1 low,
pass@8 high, the headroom that RL-Zero turns into pass@1 (the same story as R1-Zero eliciting
long chains of thought that the base model rarely chose). ``arith``: left-to-right chains,
guesses off by a few (rlvr.tasks.arith); ``pyfunc``: small Python functions from a spec,
drafts with an off-by-one constant or a wrong operator (rlvr.tasks.pyfunc).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

from rlvr.config import ConfigError, PretrainConfig
from rlvr.tasks import TASKS

EOS, PAD = "<|endoftext|>", "<|pad|>"
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
TOOL_TAG_TOKENS = ["<python>", "</python>", "<output>", "</output>"]  # a corpus with tool use (corpus.tool_prob)
STAMP = "rlvr_pretrain.json"


def build_corpus(cfg: PretrainConfig) -> list[str]:
    """Documents = prompt + response + EOS, from the task kind's corpus builder (training split only)."""
    corpus = TASKS[cfg.task.kind].corpus
    if corpus is None:
        procedural = sorted(name for name, kind in TASKS.items() if kind.corpus is not None)
        raise ConfigError(f"task.kind: {cfg.task.kind!r} has no procedural pretraining corpus; "
                          f"kinds with one: {', '.join(procedural)}")
    return [doc + EOS for doc in corpus(cfg)]


def build_tokenizer(docs: list[str], vocab_size: int, tags: list[str] = TAG_TOKENS):
    """Byte-level BPE with digits split one per token and the R1 tags (``tags``) as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs[:5000], trainer=trainer)
    tok.add_tokens(list(tags))  # ordinary (non-special) tokens: they survive decoding
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def config_hash(cfg: PretrainConfig) -> str:
    data = cfg.model_dump(mode="json")
    if data["model"].get("arch") == "llama":  # the default: bases cached before `arch` existed stay valid
        del data["model"]["arch"]
    if data["corpus"].get("tool_prob") == 0:  # likewise for bases cached before tool use existed
        del data["corpus"]["tool_prob"], data["corpus"]["tool_template"]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def is_cached(cfg: PretrainConfig) -> bool:
    stamp = Path(cfg.out_dir) / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("config_hash") == config_hash(cfg)


def pretrain(cfg: PretrainConfig, force: bool = False, progress: bool = True) -> Path:
    """Build tokenizer + model, pretrain, save to ``cfg.out_dir``; skip if cached."""
    out = Path(cfg.out_dir)
    if not force and is_cached(cfg):
        print(f"pretrain: reusing cached base model in {out} (config unchanged; --force to rebuild)")
        return out

    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    docs = build_corpus(cfg)
    tags = TAG_TOKENS + (TOOL_TAG_TOKENS if cfg.corpus.tool_prob > 0 else [])
    tokenizer = build_tokenizer(docs, cfg.vocab_size, tags)
    encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    m = cfg.model
    if m.hidden_size % m.num_heads:
        raise ConfigError("model.hidden_size must be divisible by model.num_heads")
    longest = max(len(ids) for ids in encoded)
    if longest > m.max_position_embeddings:
        raise ConfigError(f"corpus documents reach {longest} tokens > model.max_position_embeddings={m.max_position_embeddings}")
    if m.arch == "llama":
        model_cfg = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads,
            max_position_embeddings=m.max_position_embeddings, tie_word_embeddings=False,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(model_cfg)
    else:  # Qwen2 (tied or untied head), Qwen3: the same sizes in that architecture
        from transformers import AutoConfig, AutoModelForCausalLM

        from rlvr.archs import micro_config

        spec = micro_config(m.arch, len(tokenizer), hidden=m.hidden_size, layers=m.num_layers, heads=m.num_heads,
                            kv_heads=m.num_heads, max_positions=m.max_position_embeddings)
        spec["intermediate_size"] = m.intermediate_size
        model_cfg = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=tokenizer.eos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = AutoModelForCausalLM.from_config(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretrain: {len(docs)} docs, {sum(map(len, encoded))} tokens, vocab {len(tokenizer)}, "
          f"{n_params / 1e6:.2f}M params, longest doc {longest} tokens")

    tc = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < tc.warmup_steps:
            return tc.lr * (step + 1) / tc.warmup_steps
        frac = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
        return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    rng = random.Random(tc.seed)
    order: list[int] = []
    pad_id = tokenizer.pad_token_id
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.dtype == "bfloat16")
    model.train()
    bar = tqdm(range(tc.steps), desc="pretrain", disable=not progress, mininterval=2)
    loss_ema = None
    for step in bar:
        if len(order) < tc.batch_size:
            order = list(range(len(encoded)))
            rng.shuffle(order)
        idx, order = order[: tc.batch_size], order[tc.batch_size :]
        batch = [encoded[i] for i in idx]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
        attn = (ids != pad_id).long()
        labels = ids.masked_fill(attn == 0, -100)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with autocast:
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id, bos_token_id=tokenizer.eos_token_id).save_pretrained(out)
    elapsed = time.time() - t0
    (out / STAMP).write_text(json.dumps({
        "config_hash": config_hash(cfg), "params": n_params, "final_loss": loss_ema,
        "seconds": round(elapsed, 1), "config": cfg.model_dump(mode="json"),
    }, indent=1))
    print(f"pretrain: done in {elapsed:.0f}s, final loss {loss_ema:.3f}, saved to {out}")
    return out


def local_tokenizer(num_docs: int = 600, vocab_size: int = 320):
    """The project's byte-level BPE (digits split, R1 tags as tokens), trained on a few arithmetic
    documents in a second: a tokenizer for models built where no real one is at hand."""
    from rlvr.config import PretrainConfig

    cfg = PretrainConfig(vocab_size=vocab_size)
    cfg.corpus.num_docs = max(100, num_docs)
    return build_tokenizer(build_corpus(cfg), vocab_size)
