"""``rlvr verify``: score a JSONL of completions with a verifier, and audit it against another.

Heavy imports (the verifier, tqdm) happen in `run`; `configure` only touches argparse.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

ROW_FORMAT = """\
input rows (one JSON object per line):
  completion   the text to score: a full completion or a bare answer
               (also accepted under "prediction" or "response")
  answer       the reference, for the math verifiers (also accepted under "reference")
  task         optional object: the task fields, if they are not at the top level
  expected     optional true/false label: agreement with it is reported too
  ...          any other field is passed to the verifier as part of the task
               (e.g. the code verifier's test fields)

examples:
  {"completion": "... so the answer is \\\\boxed{\\\\frac{1}{2}}", "answer": "0.5"}
  {"prediction": "x = 3", "reference": "3", "expected": true}

  rlvr verify --verifier math data.jsonl --out results.jsonl
  rlvr verify --verifier math data.jsonl --compare math_verify --show 50
  rlvr verify --verifier code code_rows.jsonl --workers 4
  rlvr verify --verifier math data.jsonl --set timeout=10 --set priority='["boxed","bare"]'

output: accuracy, extraction failures (no answer found), timeouts and other errors per
verifier, and the count of each outcome (docs/verifiers.md#outcomes-whose-doing-a-score-was); with --compare, a 3x3 agreement table (1 / 0 / error) and the disagreeing rows.
--out writes each input row with a "scores" object holding every verifier's result.
Exit status: 0 when scored (even with errors), 2 on bad input or an unknown verifier.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ROW_FORMAT
    parser.add_argument("data", help="JSONL file of rows to score (format below)")
    parser.add_argument("--verifier", default="math", help="verifier name (see verifiers.available()); default: math")
    parser.add_argument("--compare", default=None, metavar="NAME", help="a second verifier to compare with, e.g. math_verify")
    parser.add_argument("--out", default=None, help="write per-row results to this JSONL file")
    parser.add_argument("--workers", type=int, default=2, help="parallel checks (default 2)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--show", type=int, default=20, help="how many disagreeing rows to print (default 20)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor argument for --verifier (VALUE parsed as JSON if it can be); repeatable")
    parser.add_argument("--compare-set", dest="compare_settings", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor argument for --compare; repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _kwargs(settings: list[str], flag: str) -> dict[str, Any]:
    from rlvr.config import ConfigError

    out = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_verifier(name: str, settings: list[str], flag: str, set_flag: str) -> Any:
    """``verifiers.get(name, **settings)``; an unknown name, a plugin that fails to import or a
    constructor argument it does not take is one error naming the flag."""
    import inspect

    import verifiers
    from rlvr.config import ConfigError
    from rlvr.errors import MissingPackageError
    from verifiers.registry import factory_of

    kwargs = _kwargs(settings, set_flag)
    try:
        factory = factory_of(name)
    except KeyError as exc:
        raise ConfigError(f"{flag}: {exc.args[0]}") from None
    except ImportError as exc:
        raise MissingPackageError(f"{flag}: {exc}") from exc
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:  # checked before the call, so a TypeError inside the verifier stays a bug
        raise ConfigError(f"{set_flag}: verifier {name!r} does not take {sorted(kwargs)}: {exc}") from None
    except ValueError:  # no signature to read (a builtin): let the call say
        pass
    return verifiers.get(name, **kwargs)


def read_rows(path: str, limit: int | None,
              needed_by: tuple = ()) -> list[tuple[str, dict[str, Any], Any, dict[str, Any]]]:
    """(completion, task, label, raw row) per line; a DataError names the bad line, including a row
    that lacks (or holds null for) a key a verifier of ``needed_by`` needs, such as ``answer``."""
    from pathlib import Path

    from rlvr.errors import DataError, NotFoundError
    from verifiers import missing_keys

    if not Path(path).is_file():
        raise NotFoundError(f"{path!r}: no such file (the JSONL of rows to score)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(rows) >= limit:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: a row must be a JSON object")
            key = next((k for k in ("completion", "prediction", "response") if k in row), None)
            if key is None:
                raise DataError(f"{path}:{lineno}: no 'completion' (or 'prediction'/'response') field")
            if isinstance(row.get("task"), dict):
                task = dict(row["task"])
            else:
                task = {k: v for k, v in row.items() if k not in (key, "expected")}
            if "answer" not in task and "reference" in task:
                task["answer"] = task["reference"]
            for verifier in needed_by:
                missing = missing_keys(verifier, task)
                if missing:
                    nulls = [k for k in missing if k in task and task[k] is None]
                    what = (f"{', '.join(map(repr, nulls))} is null" if nulls
                            else f"the row has no {', '.join(map(repr, missing))}")
                    raise DataError(f"{path}:{lineno}: {what}, which verifier {verifier.name!r} needs to score it "
                                    "(give it, or drop the row)")
            rows.append((str(row[key]), task, row.get("expected"), row))
    return rows


def _outcome(score: Any) -> str:
    if score.error is not None:
        return "error"
    return "1" if score.correct or (score.correct is None and score.reward > 0) else "0"


def _report(name: str, scores: list[Any], labels: list[Any]) -> list[str]:
    from verifiers.batch import error_kind, outcome_counts

    n = len(scores)
    correct = sum(_outcome(s) == "1" for s in scores)
    no_answer = sum(s.error is None and s.metrics.get("extracted", 1.0) == 0.0 for s in scores)
    kinds = Counter(error_kind(s.error) for s in scores if s.error is not None)
    timeouts = kinds.get("timeout", 0)
    others = sum(kinds.values()) - timeouts
    pct = lambda k: f"{100.0 * k / n:5.1f}%" if n else "  n/a"  # noqa: E731
    lines = [
        f"{name}",
        f"  rows               {n}",
        f"  correct            {correct:6d}  {pct(correct)}",
        f"  extraction fails   {no_answer:6d}  {pct(no_answer)}",
        f"  timeouts           {timeouts:6d}  {pct(timeouts)}",
        f"  other errors       {others:6d}  {pct(others)}"
        + (f"  ({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()) if k != 'timeout')})" if others else ""),
        "  outcomes           " + ", ".join(f"{k.removeprefix('outcome/')}: {v:.0f}"
                                          for k, v in outcome_counts(scores).items() if v),
    ]
    labelled = [(s, bool(lab)) for s, lab in zip(scores, labels) if isinstance(lab, bool)]
    if labelled:
        agree = sum(_outcome(s) == ("1" if lab else "0") for s, lab in labelled)
        lines.append(f"  agrees with labels {agree:6d}/{len(labelled)}  ({100.0 * agree / len(labelled):.1f}%)")
    return lines


def _agreement(a: str, b: str, sa: list[Any], sb: list[Any]) -> list[str]:
    cells = Counter((_outcome(x), _outcome(y)) for x, y in zip(sa, sb))
    n = len(sa)
    agree = sum(v for (x, y), v in cells.items() if x == y)
    width = max(len(a) + 8, 12)
    keys = ("1", "0", "error")
    lines = [f"agreement {a} vs {b}: {agree}/{n} ({100.0 * agree / n:.1f}%)" if n else "agreement: no rows", ""]
    lines.append(" " * width + "".join(f"{b + '=' + k:>{max(len(b) + 8, 12)}}" for k in keys))
    for ka in keys:
        row = f"{a + '=' + ka:<{width}}" + "".join(f"{cells.get((ka, kb), 0):>{max(len(b) + 8, 12)}}" for kb in keys)
        lines.append(row)
    return lines


def _short(text: str, limit: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit // 2] + " … " + text[-limit // 2 :]


def _score_all(verifier: Any, rows: list, workers: int, progress: bool, desc: str) -> list[Any]:
    from tqdm import tqdm

    from verifiers.batch import score_batch

    scores: list[Any] = []
    chunk = max(1, workers) * 8
    with tqdm(total=len(rows), desc=desc, unit="row", disable=not progress, file=sys.stderr) as bar:
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            scores.extend(score_batch(verifier, [r[0] for r in part], [r[1] for r in part], workers=workers))
            bar.update(len(part))
    return scores


def _as_dict(score: Any) -> dict[str, Any]:
    return {"reward": score.reward, "correct": score.correct, "error": score.error, "outcome": score.outcome,
            "metrics": score.metrics}


def run(args: argparse.Namespace) -> int:
    from rlvr.commands._common import fail

    # every mistake in the input is one `error:` line, exit 2 (rlvr.cli)
    main = build_verifier(args.verifier, args.settings, "--verifier", "--set")
    other = build_verifier(args.compare, args.compare_settings, "--compare", "--compare-set") if args.compare else None
    if other is not None and other.name == main.name:
        return fail("--compare names the same verifier as --verifier")
    rows = read_rows(args.data, args.limit, (main,) if other is None else (main, other))
    progress = not args.no_progress
    print(f"rlvr verify: {len(rows)} rows from {args.data}, verifier {main.name}"
          + (f" vs {other.name}" if other else "") + f", {args.workers} workers", file=sys.stderr)
    main_scores = _score_all(main, rows, args.workers, progress, main.name)
    other_scores = _score_all(other, rows, args.workers, progress, other.name) if other else None

    labels = [r[2] for r in rows]
    lines = _report(main.name, main_scores, labels)
    if other_scores is not None:
        lines += [""] + _report(other.name, other_scores, labels)
        lines += [""] + _agreement(main.name, other.name, main_scores, other_scores)
        diff = [i for i, (x, y) in enumerate(zip(main_scores, other_scores)) if _outcome(x) != _outcome(y)]
        if diff:
            lines += ["", f"disagreeing rows ({min(len(diff), args.show)} of {len(diff)} shown):"]
            for i in diff[: args.show]:
                completion, task, label, _ = rows[i]
                x, y = main_scores[i], other_scores[i]
                verdicts = f"{main.name}={_outcome(x)} {other.name}={_outcome(y)}"
                if isinstance(label, bool):
                    verdicts += f" label={int(label)}"
                lines.append(f"  row {i}: {verdicts}")
                lines.append(f"      completion: {_short(completion)}")
                if "answer" in task:
                    lines.append(f"      answer:     {_short(str(task['answer']))}")
                for s, n in ((x, main.name), (y, other.name)):
                    if s.error:
                        lines.append(f"      {n} error: {_short(s.error)}")
    print("\n".join(lines))

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for i, (_, _, _, raw) in enumerate(rows):
                result = dict(raw)
                result["scores"] = {main.name: _as_dict(main_scores[i])}
                if other_scores is not None:
                    result["scores"][other.name] = _as_dict(other_scores[i])
                f.write(json.dumps(result, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0
