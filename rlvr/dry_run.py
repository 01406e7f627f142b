"""``rlvr train --config RECIPE --dry-run``: everything a real run would check, then one RL step on CPU.

1. The resolved config, printed.
2. Reachability of the model, its tokenizer and the dataset, each one line: a local directory is
   checked; a hub id is looked up in the local cache, then on the hub (its size), and an
   unreachable one says how to fetch it. Where nothing is reachable (no network: the normal case
   in tests) the dry run carries on with stand-ins and says so.
3. The memory preflight (rlvr.preflight) for the recipe's GPU (``engine.gpu_memory_gib``, else
   80 GiB), from the real model's config (or the known config of its hub id).
4. One full RL step on CPU (sample, score, learn, sync, evaluate) with a random-init model of the
   same architecture, shrunk (rlvr.archs.shrink_config), with the real tokenizer when it is at
   hand, else the project's local one; GPU-only settings (sleep mode, trackers) are turned off.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

from rlvr.config import TrainConfig, config_yaml

# Rows a dry run's CPU step loads per split (it samples 2 prompts and evaluates 2).
DRY_RUN_ROWS = 64

# config.json fields of the recipes' models, for the preflight and the shrunk model when the hub is out of reach
_QWEN25 = {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1e6,
           "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151643}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B": {**_QWEN25, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                          "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                          "tie_word_embeddings": True},
    "Qwen/Qwen2.5-1.5B": {**_QWEN25, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                          "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 131072,
                          "tie_word_embeddings": True},
    "Qwen/Qwen2.5-3B": {**_QWEN25, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                        "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                        "tie_word_embeddings": True},
    "Qwen/Qwen2.5-Math-7B": {**_QWEN25, "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                             "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                             "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": False},
}


def check_model(name: str) -> tuple[str | None, str]:
    """(local directory or None, one line saying what was found)."""
    from rlvr.models import _HUB_ID, check_model_dir

    p = Path(name)
    if p.exists() or not _HUB_ID.match(name):
        try:
            check_model_dir(p)
        except FileNotFoundError as exc:
            return None, f"model: NOT FOUND: {exc}"
        return str(p), f"model: local directory {name!r} (config, weights, tokenizer present)"
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=name, local_files_only=True)
        check_model_dir(local)
        return local, f"model: {name!r} in the local hub cache ({local})"
    except Exception:
        pass
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(name, files_metadata=True, timeout=10)
        size = sum((s.size or 0) for s in info.siblings or []) / 1024**3
        return None, (f"model: {name!r} is on the hub ({size:.1f} GiB), not downloaded: a real run fetches it "
                      f"(or `huggingface-cli download {name} --local-dir DIR` and set model=DIR)")
    except Exception as exc:
        return None, (f"model: UNREACHABLE: {name!r} is not a local directory, not in the hub cache, and the hub "
                      f"did not answer ({type(exc).__name__}). Download it where the hub is reachable "
                      f"(`huggingface-cli download {name} --local-dir DIR`) and set model=DIR")


def check_dataset(cfg: TrainConfig) -> tuple[bool, str]:
    from rlvr.tasks import load_task

    try:
        splits = load_task(cfg.task)
    except Exception as exc:  # unreachable hub dataset, missing file, bad columns: one line
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return False, f"dataset: UNREACHABLE ({cfg.task.kind}, path={getattr(cfg.task, 'path', None)!r}): {first}"
    return True, f"dataset: {cfg.task.kind}: {len(splits.train)} training and {len(splits.test)} held-out rows"


def stand_in_rows(kind: str, n: int = 60) -> list[dict[str, str]]:
    """Rows in the source format of ``kind`` (gsm8k / math), for the CPU step when the dataset is out of reach."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        question = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
        if kind == "gsm8k":
            rows.append({"question": question, "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
        else:
            rows.append({"problem": question, "answer": str(a + b), "solution": f"$\\boxed{{{a + b}}}$"})
    return rows


def cpu_has_bf16_kernels() -> bool:
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")


def cpu_step_config(cfg: TrainConfig, model_dir: str, work: Path, dataset_ok: bool,
                    engine_kind: str | None = None) -> TrainConfig:
    data = cfg.as_written()  # derived values (the parity bound for the dtype, ...) are derived again
    data.update(model=model_dir, run_dir=str(work / "run"))
    from rollouts.config import ENGINES, EngineConfigBase

    engine = data["engine"]
    if engine_kind is not None and engine_kind != engine["kind"]:  # only the fields every kind has carry over
        engine = {k: v for k, v in engine.items() if k in EngineConfigBase.model_fields} | {"kind": engine_kind}
    # one thread: a shrunk model gains nothing from an OpenMP team, and on shared cores a team of two waits
    # for its second thread at every op (a 2-layer decode step went from ~1 ms to ~100 ms under load)
    cpu = dict(sleep_level=0, gpu_memory_gib=None, kv_cache_gib=0.25, threads=1)
    data["engine"] = engine | {k: v for k, v in cpu.items() if k in ENGINES[engine["kind"]].model_fields}
    if not cpu_has_bf16_kernels():  # torch's CPU bf16 kernels need AVX-512 ("pack_vnni2 is only supported ...")
        data["engine"]["dtype"] = "float32"
        data["train"]["dtype"] = "float32"
    data["sampling"].update(n=min(cfg.sampling.n, 4), max_tokens=min(cfg.sampling.max_tokens, 24))
    data["train"].update(steps=1, prompts_per_step=2, micro_batch_size=min(cfg.train.micro_batch_size, 8), threads=1,
                         max_seq_len=None)
    data["train"]["async"] = False
    data["eval"].update(every=0, num_prompts=2, k=1, max_tokens=8)
    data["logging"].update(report_to=[], tensorboard=False, progress=False, samples_every=0)
    data["checkpoint"].update(every=0)
    data["alarms"].update(zero_reward_steps=0)
    task = data["task"]
    if task.get("max_prompt_tokens"):
        task["max_prompt_tokens"] = None
    # one step of 2 prompts and 2 held-out ones: a procedural task need not generate its full
    # training set again (the reachability check above already did, e.g. 20,000 countdown problems)
    if "train_size" in task:
        task["train_size"] = min(task["train_size"] or DRY_RUN_ROWS, DRY_RUN_ROWS)
    if "test_size" in task:
        task["test_size"] = min(task["test_size"], DRY_RUN_ROWS)
    if not dataset_ok and task.get("kind") in ("gsm8k", "math"):
        path = work / f"{task['kind']}-stand-in.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in stand_in_rows(task["kind"])))
        task.update(path=str(path), subset=None, split="train", test_path=None, test_split=None, columns={})
    return TrainConfig.model_validate(data)


def dry_run(cfg: TrainConfig, workdir: str | None = None, engine_kind: str | None = None) -> dict[str, Any]:
    """Print the checks and run the CPU step; returns {"model_ok", "dataset_ok", "preflight", "metrics"}.
    ``engine_kind``: run the CPU step on this engine instead of the recipe's (tests: hf starts faster)."""
    from rlvr import preflight
    from rlvr.archs import build_model, read_config, shrink_config
    from rlvr.pretrain import local_tokenizer

    print("# resolved config")
    print(config_yaml(cfg), end="")
    print("# reachability")
    model_dir, line = check_model(cfg.model)
    print(line)
    tokenizer = None
    if model_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        print(f"tokenizer: from the model ({len(tokenizer)} tokens)")
    else:
        print("tokenizer: the model's is out of reach; the CPU step uses the project's local BPE tokenizer")
    dataset_ok, line = check_dataset(cfg)
    print(line)
    real_config = read_config(model_dir) if model_dir is not None else KNOWN_CONFIGS.get(cfg.model)
    est = None
    print("# memory preflight")
    if real_config is None:
        print(f"preflight: skipped (no config for {cfg.model!r}: not reachable and not a known recipe model)")
    else:
        gpu_gib = cfg.engine.gpu_memory_gib or 80.0
        est = preflight.estimate(cfg, real_config, gpu_gib)
        print(est.report())
        if not est.fits:
            fix = preflight.settings_that_fit(cfg, real_config, gpu_gib)
            print("  settings that would fit one GPU: " + (" ".join(fix) if fix else
                  "none: shard the learner over GPUs (cluster.learner_ranks=M cluster.learner_sharding=fsdp "
                  "cluster.gpus_per_rank=1) or use a smaller model"))
    print("# one RL step on CPU (random-init, same architecture, shrunk)")
    from rlvr.loop import train

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        if tokenizer is None:
            tokenizer = local_tokenizer()
        spec = shrink_config(real_config or {"model_type": "llama", "tie_word_embeddings": False},
                             vocab_size=len(tokenizer))
        small = build_model(spec, tokenizer, work / "model")
        print(f"model: {spec['model_type']} (tie_word_embeddings={spec.get('tie_word_embeddings', False)}), "
              f"{spec['num_hidden_layers']} layers x {spec['hidden_size']} wide, vocab {spec['vocab_size']}")
        step_cfg = cpu_step_config(cfg, small, work, dataset_ok, engine_kind)
        if not dataset_ok:
            print(f"dataset: the CPU step uses stand-in rows in the {cfg.task.kind} format")
        summary = train(step_cfg, progress=False)
        records = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
        metrics = next(r for r in records if r["kind"] == "train")
    keys = ("reward_mean", "response_len_mean", "loss", "grad_norm", "logp_diff_max", "mismatch_kl", "step_s")
    print("step 1: " + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics))
    print(f"dry run done: held-out pass@1 {summary['after'].get('pass@1', float('nan')):.3f} (random weights)")
    return {"model_ok": model_dir is not None, "dataset_ok": dataset_ok, "preflight": est, "metrics": metrics}
