"""A recipe's report: every path's final model evaluated on the same held-out split, one table,
one PNG of held-out greedy pass@1 against cumulative training tokens.

Evaluations are the RL loop's own `evaluate` with one config (task, rubric, eval settings,
engine). An RL stage already evaluated its input and output with those settings; those numbers
are reused, every other model is evaluated once and the result cached beside it
(``rlvr_eval.json``, keyed by the evaluation settings and the model's content,
`rlvr.stages.model_fingerprint`).

The base row says which stages made the base and what they trained; a path row, what its
stages trained after the base.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rlvr.stages import EVAL_CACHE


def eval_key(cfg: Any) -> str:
    """What an evaluation depends on besides the model."""
    payload = {"task": cfg.task.model_dump(mode="json"), "rewards": cfg.rewards.model_dump(mode="json"),
               **({"env": cfg.env.model_dump(mode="json")} if cfg.env.kind != "single_turn" else {}),
               "eval": cfg.eval.model_dump(mode="json", exclude={"every"}), "engine": cfg.engine.kind, "seed": cfg.train.seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_model(model_dir: str, cfg: Any) -> dict[str, float]:
    """Held-out metrics of ``model_dir`` under the evaluation config ``cfg`` (cached beside the model)."""
    from rlvr.evaluate import evaluate_model as evaluate
    from rlvr.stages import model_fingerprint

    key = f"{eval_key(cfg)}:{model_fingerprint(model_dir)}"
    cache = Path(model_dir) / EVAL_CACHE
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in cached and complete(cached[key], cfg.eval.k):
        return cached[key]
    metrics = evaluate(cfg, model_dir)
    cached[key] = metrics
    cache.write_text(json.dumps(cached, indent=1))
    return metrics


def complete(metrics: dict[str, float] | None, k: int) -> bool:
    """Whether ``metrics`` hold every figure the table shows (an evaluation made before the sampled
    format rate existed does not, and is redone)."""
    return metrics is not None and (k == 1 or "sampled_format_rate" in metrics)


def report(recipe: Any, wired: list[tuple[Any, Any]], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from rlvr.config import TrainConfig, load_config
    from rlvr.logging import print_table

    rep = recipe.report
    cfgs = {st.name: cfg for st, cfg in wired}
    commands = {st.name: st.command for st, _ in wired}
    output = {name: str(rec["output"]) for name, rec in records.items()}

    seed = [f"train.seed={recipe.seed}"] if recipe.seed is not None else []  # as the RL stages evaluated

    def eval_cfg(model_dir: str) -> Any:
        return load_config(TrainConfig, rep.eval_config, [*seed, *rep.overrides, f"model={model_dir}"])

    key = eval_key(eval_cfg(output[rep.base]))
    k = eval_cfg(output[rep.base]).eval.k
    known: dict[str, dict[str, float]] = {}  # model dir -> metrics, from RL stages evaluated the same way
    for name, rec in records.items():  # an RL stage's record holds its input's and output's evaluations
        if "before" in rec and "after" in rec and eval_key(cfgs[name]) == key:
            known[output[name]] = rec["after"]
            known.setdefault(str(cfgs[name].model), rec["before"])
    needed = [rep.base] + [n for stages in rep.paths.values() for n in stages]
    metrics: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(needed):
        reused = known.get(output[name])
        metrics[name] = reused if complete(reused, k) else evaluate_model(output[name], eval_cfg(output[name]))
        print(f"evaluated {name}: pass@1 {metrics[name]['pass@1']:.3f}")
    base = metrics[rep.base]
    inputs = {st.name: st.input for st, _ in wired}
    rows, table = [], []
    for label, stages, final in [("base", made_of(rep.base, inputs), base)] + \
            [(label, stages, metrics[stages[-1]]) for label, stages in rep.paths.items()]:
        steps = _total(records, stages, "optimizer_steps")  # None: a stage did not count it (pretraining's tokens)
        tokens = _total(records, stages, "tokens")
        wall = sum(records[n].get("seconds", 0.0) for n in stages)
        chain = " → ".join(commands[n] for n in stages)
        entry = {"path": label, "stages": chain, "optimizer_steps": steps, "tokens": tokens, "wall_s": round(wall, 1),
                 "pass@1": final["pass@1"], f"pass@{k}": final.get(f"pass@{k}"), "format_rate": final.get("format_rate"),
                 "sampled_format_rate": final.get("sampled_format_rate"), "response_len": final["response_len"]}
        table.append(entry)
        rows.append((label, chain, "-" if steps is None else str(steps), "-" if tokens is None else f"{tokens:,}",
                     f"{final['pass@1']:.3f}", f"{final.get(f'pass@{k}', 0):.3f}",
                     _fmt(final.get("format_rate")), _fmt(final.get("sampled_format_rate")),
                     f"{final['response_len']:.1f}", f"{wall:.0f}"))
    # format: the strict R1 check of the greedy completion; sampled format: of the pass@k samples (T > 0)
    headers = ("path", "stages", "opt steps", "tokens trained", "pass@1", f"pass@{k}", "format", "sampled format",
               "resp len", "wall s")
    n_test = int(base.get("num_prompts", 0))
    print(f"\n{recipe.name}: held-out results ({n_test} test prompts; same base, same task; budget = optimizer "
          "steps and tokens trained: the base row's by the stages that made the base, a path's by its stages after it)")
    print_table(rows, headers)
    for name, rec in records.items():  # what DPO is meant to change, on pairs it never trained on
        if rec.get("heldout_margin_before") is not None:
            print(f"{name}: held-out chosen-over-rejected log-prob margin {rec['heldout_margin_before']:+.2f} -> "
                  f"{rec['heldout_margin_after']:+.2f} ({rec['heldout_pairs']} pairs, {rec['pairs']} training pairs)")
    for name in metrics:  # what each stage changed against the model it started from
        if inputs[name] in metrics:
            before, after = metrics[inputs[name]], metrics[name]
            print(f"{name}: held-out over {inputs[name]}: greedy pass@1 {before['pass@1']:.3f} -> {after['pass@1']:.3f}, "
                  f"format {_fmt(before.get('format_rate'))} -> {_fmt(after.get('format_rate'))}, sampled format "
                  f"{_fmt(before.get('sampled_format_rate'))} -> {_fmt(after.get('sampled_format_rate'))}")
    out_root = Path(recipe.out_root)
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]
    (out_root / "table.md").write_text("\n".join(md) + "\n")
    (out_root / "table.json").write_text(json.dumps(table, indent=1))
    plot = plot_paths(rep, records, metrics, commands, out_root / rep.plot, recipe.name)
    print(f"table: {out_root / 'table.md'}\nplot: {plot}")
    return {"table": table, "plot": str(plot)}


def made_of(name: str, inputs: dict[str, str | None]) -> list[str]:
    """The recipe's stages that made stage ``name``'s model, first to last (``name`` included)."""
    chain = [name]
    while inputs.get(chain[0]) is not None:
        chain.insert(0, inputs[chain[0]])
    return chain


def _total(records: dict[str, dict[str, Any]], stages: list[str], field: str) -> int | None:
    values = [records[n].get(field) for n in stages]
    return None if None in values else sum(values)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def path_curve(stages: list[str], records: dict[str, dict[str, Any]], metrics: dict[str, dict[str, float]],
               base_pass1: float) -> list[tuple[float, float]]:
    """(cumulative tokens, held-out pass@1): the base at 0, then each stage (an RL stage's own evaluations)."""
    points, tokens = [(0.0, base_pass1)], 0.0
    for name in stages:
        rec = records[name]
        curve = rec.get("curve") or []
        for t, p in curve[1:-1]:  # its first point is its input (already plotted), its last is the output
            points.append((tokens + t, p))
        tokens += rec.get("tokens", 0)
        points.append((tokens, metrics[name]["pass@1"]))
    return points


def plot_paths(rep: Any, records: dict[str, dict[str, Any]], metrics: dict[str, dict[str, float]],
               commands: dict[str, str], png: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^vP*X"
    for i, (label, stages) in enumerate(rep.paths.items()):
        xs, ys = zip(*path_curve(stages, records, metrics, metrics[rep.base]["pass@1"]))
        # paths share their first stages: shorter paths are drawn on top, so none hides another
        ax.plot(xs, ys, marker=markers[i % len(markers)], linestyle="-", markersize=9 - len(stages), alpha=0.85,
                zorder=10 - len(stages), label=f"{label} ({' → '.join(commands[n] for n in stages)})")
    ax.set_xlabel("cumulative training tokens after pretraining")
    ax.set_ylabel("held-out greedy pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title}: held-out pass@1 against training tokens")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
