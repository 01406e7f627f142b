"""Our `math` verifier vs math-verify on the same labelled corpus, in one run.

    .venv/bin/python benchmarks/verify_math.py [--data tests/data/math_corpus.jsonl] [--workers 2] [--repeat 3]

Prints checks/s for each with the same number of worker processes, how often each agrees
with the labels, how often they agree with each other on the whole corpus, and the
disagreements (with the labels, and between the two) by category. Ours runs every check in a
killable worker (`verifiers.pool`, hard timeout); math-verify runs natively in a
multiprocessing pool, each process calling ``verify(parse(gold), parse(pred))`` with its own
``signal.alarm`` timeouts, which is how it is usually deployed. Start-up (importing sympy,
starting processes) is excluded from both timings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _mv_init() -> None:
    global _parse, _verify, _gold_text
    from math_verify import parse, verify

    from verifiers.math._mathverify_worker import gold_text

    _parse, _verify, _gold_text = parse, verify, gold_text


def _mv_check(pair: tuple[str, str]) -> bool | None:
    pred_text, ref = pair
    try:
        gold = _parse(_gold_text(ref))
        pred = _parse(_gold_text(pred_text)) if _gold_text(pred_text) != pred_text else []
        if not pred:
            pred = _parse(pred_text)
        return bool(_verify(gold, pred)) if pred else False
    except Exception:
        return None


def run_ours(rows: list[dict], workers: int, repeat: int) -> tuple[list, float]:
    import verifiers

    v = verifiers.get("math", timeout=5.0, workers=workers)
    completions = [r["prediction"] for r in rows]
    tasks = [{"answer": r["reference"]} for r in rows]
    verifiers.score_batch(v, completions[:8], tasks[:8], workers=workers)  # start workers
    start = time.perf_counter()
    for _ in range(repeat):
        scores = verifiers.score_batch(v, completions, tasks, workers=workers)
    elapsed = time.perf_counter() - start
    verdicts = [None if s.error else bool(s.correct) for s in scores]
    return verdicts, len(rows) * repeat / elapsed


def run_math_verify(rows: list[dict], workers: int, repeat: int) -> tuple[list, float]:
    pairs = [(r["prediction"], r["reference"]) for r in rows]
    with mp.get_context("spawn").Pool(workers, initializer=_mv_init) as pool:
        pool.map(_mv_check, pairs[:8])  # warm up every process
        pool.map(_mv_check, pairs[:8])
        start = time.perf_counter()
        for _ in range(repeat):
            verdicts = pool.map(_mv_check, pairs, chunksize=4)
        elapsed = time.perf_counter() - start
    return verdicts, len(rows) * repeat / elapsed


def print_by_category(rows: list[dict], ours: list, theirs: list) -> None:
    """Per category: cases, and how many disagree with the labels (ours, math-verify) and
    with each other. Only categories with a disagreement are listed."""
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row, a, b in zip(rows, ours, theirs):
        st = stats[row.get("category", "-")]
        st[0] += 1
        label = row.get("expected")
        st[1] += isinstance(label, bool) and a is not label
        st[2] += isinstance(label, bool) and b is not label
        st[3] += a != b
    print(f"\n{'category':26}{'cases':>6}{'ours wrong':>12}{'m-v wrong':>11}{'ours != m-v':>13}")
    for cat, (n, ow, tw, dis) in sorted(stats.items(), key=lambda kv: (-kv[1][3], kv[0])):
        if ow or tw or dis:
            print(f"{cat:26}{n:>6}{ow:>12}{tw:>11}{dis:>13}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "tests" / "data" / "math_corpus.jsonl"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    try:
        import math_verify  # noqa: F401
    except ImportError:
        print("math-verify is not installed (pip install math-verify); only our verifier is measured")
        ours, ours_rate = run_ours(rows, args.workers, args.repeat)
        print(f"ours: {ours_rate:.1f} checks/s with {args.workers} workers")
        return 0

    ours, ours_rate = run_ours(rows, args.workers, args.repeat)
    theirs, theirs_rate = run_math_verify(rows, args.workers, args.repeat)
    labels = [r.get("expected") for r in rows]

    def vs_labels(verdicts: list) -> str:
        pairs = [(v, lab) for v, lab in zip(verdicts, labels) if isinstance(lab, bool)]
        ok = sum(v is lab for v, lab in pairs)
        fp = sum(v is True and lab is False for v, lab in pairs)
        fn = sum(v is not True and lab is True for v, lab in pairs)
        return f"{ok}/{len(pairs)} ({100 * ok / len(pairs):.1f}%)  false pos {fp}  false neg {fn}"

    agree = sum(a == b for a, b in zip(ours, theirs))
    errors = lambda v: sum(x is None for x in v)  # noqa: E731
    print(f"corpus: {args.data} ({len(rows)} cases), {args.workers} workers, {args.repeat} passes")
    print(f"{'':14}{'checks/s':>10}  {'errors':>6}  agreement with labels")
    print(f"{'ours (math)':14}{ours_rate:>10.1f}  {errors(ours):>6}  {vs_labels(ours)}")
    print(f"{'math-verify':14}{theirs_rate:>10.1f}  {errors(theirs):>6}  {vs_labels(theirs)}")
    print(f"speed ratio ours / math-verify: {ours_rate / theirs_rate:.2f}x")
    print(f"agreement ours vs math-verify: {agree}/{len(rows)} ({100 * agree / len(rows):.1f}%)")
    print_by_category(rows, ours, theirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
