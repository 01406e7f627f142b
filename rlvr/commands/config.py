"""`rlvr config [SECTION]`: every config field with its type, default and meaning (from the pydantic models)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("section", nargs="?", default=None,
                   help="a section of the RL config (task, engine, sampling, rewards, algorithm, optim, train, eval, "
                        "alarms, logging, checkpoint) or 'pretrain' for the pretraining config; none: all")


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def _fields(model, prefix: str, seen: set) -> list[tuple[str, str, str, str]]:
    from pydantic import BaseModel

    rows = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{f.alias or name}"
        ann = f.annotation
        if name in ("task", "engine", "env") and not isinstance(ann, type):  # the kinds' unions: listed per kind by run()
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _fields(ann, key + ".", seen)
            continue
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(inner) == 1 and f.default is None:  # an optional section (lora: None = off): its fields
            if key not in seen:
                seen.add(key)
                rows.append((key, f"{inner[0].__name__} | None", "None", (f.description or "").replace("\n", " ")))
            rows += _fields(inner[0], key + ".", seen)
            continue
        default = "(required)" if f.is_required() else repr(f.get_default(call_default_factory=True))
        if key not in seen:
            seen.add(key)
            rows.append((key, _type_name(ann), default[:60], (f.description or "").replace("\n", " ")))
    return rows


def _union_rows(section: str, default: str, what: str, base, kinds: dict) -> list[tuple[str, str, str, str]]:
    """A union section: its kind, the fields every kind has, then each kind's own (tagged with the kinds)."""
    rows = [(f"{section}.kind", "str", default, f"{what}: {', '.join(sorted(kinds))}.")]
    rows += [(f"{section}." + r[0], *r[1:]) for r in _fields(base, "", set()) if r[0] != "kind"]
    common = set(base.model_fields)
    by_key: dict[str, tuple[list[str], tuple]] = {}
    for name, config in sorted(kinds.items()):
        for r in _fields(config, "", set()):
            if r[0] not in common:
                by_key.setdefault(r[0], ([], r))[0].append(name)
    return rows + [(f"{section}.{key}  [{', '.join(names)}]", *r[1:]) for key, (names, r) in by_key.items()]


def run(args: argparse.Namespace) -> int:
    from rlvr.commands._common import fail
    from rlvr.config import PretrainConfig, TrainConfig
    from rlvr.tasks import TASKS

    if args.section == "pretrain":
        models = [("", PretrainConfig)]
    else:
        models = [("", TrainConfig)]
        if args.section is not None and args.section not in TrainConfig.model_fields:
            return fail(f"unknown section {args.section!r}; sections: {', '.join(TrainConfig.model_fields)}, pretrain")
    rows = []
    for prefix, model in models:
        rows += [r for r in _fields(model, prefix, set()) if args.section in (None, "pretrain")
                 or r[0].split(".")[0] == args.section]
    if args.section in (None, "task"):
        from rlvr.tasks import TaskBase

        rows += _union_rows("task", "'arith'", "Task kind", TaskBase, {n: k.config for n, k in TASKS.items()})
    if args.section in (None, "engine"):
        from rollouts.config import ENGINES, EngineConfigBase

        rows += _union_rows("engine", "'hf'", "Rollout engine kind", EngineConfigBase,
                            {n: c for n, c in ENGINES.items() if c.trainable})
    if args.section in (None, "env"):
        from rlvr.envs import ENVS, EnvBase

        rows += _union_rows("env", "'single_turn'", "Environment kind", EnvBase, {n: k.config for n, k in ENVS.items()})
    width = max(len(r[0]) for r in rows)
    for key, typ, default, desc in rows:
        print(f"{key:<{width}}  {typ}  = {default}\n{'':<{width}}  {desc}")
    return 0
