"""Do two versions of rlvr train identically? Runs each scenario on a base commit and on a head
(a working tree or a commit), then compares every non-timing value of every `metrics.jsonl` line
and every tensor of the final weights, exactly (== and torch.equal, no tolerance).

    python benchmarks/compare_runs.py --base 0165fce [--head PATH_OR_COMMIT] [--only static,hf]
                                      [--out /tmp/compare-runs] [--model micro|tiny|PATH] [--steps 20]
    python benchmarks/compare_runs.py --list      # the scenarios and their overrides

The scenarios (every one at `train.threads=1`, 20 steps, the demo config `configs/tiny_r1zero.yaml`
with a small batch and a small evaluation, see COMMON and SCENARIOS):

    static        the demo config on engine.kind=static (the demo's engine)
    hf            the demo config on engine.kind=hf
    hf_workers2   engine.kind=hf, cluster.rollout_workers=2 (Ray)
    ranks2        cluster.learner_ranks=2 (Ray, gloo), static engine
    ppo           configs/ppo.yaml: PPO with its critic (GAE, value head), hf engine
    lora          lora.r=4 lora.alpha=8 on the demo config, static engine
    async         train.async=true (one-step-off), static engine
    resume_kill9  the demo config (static engine, a checkpoint every 5 steps): on the head side the run
                  is killed with SIGKILL once step 12 is logged (checkpoints 5 and 10 are on disk by then;
                  the script prints the ones it saw), then continued with `rlvr train --resume RUN_DIR`;
                  the base side runs uninterrupted. So the pair is "head, killed and resumed" against
                  "base, in one go": metrics past the checkpoint are redone by the resumed run.

How each side runs: the base commit is checked out with `git worktree add --detach` under
OUT/worktrees and every run is `.venv/bin/python -m rlvr.cli train ...` of this repository's
virtualenv with the worktree as cwd and PYTHONPATH, so the worktree's rlvr / rollouts / verifiers
are imported rather than the editable install's (checked before the first run of each side:
the script prints where each package was imported from and stops if it is not the tree). A
`--head` that is a commit gets a worktree of its own. One that is a directory (the default: this
working tree, uncommitted changes included) is copied first, its tracked files and its untracked files
that git does not ignore as they are when the script starts, to OUT/worktrees/head-snapshot, and the
runs use that copy: edits made to the directory while the script runs (minutes) then cannot mix two
versions into one comparison (`--in-place` runs in the directory itself). Worktrees and the snapshot are removed
at the end (`--keep-worktrees` keeps them).

The base side's results are cached per (commit, scenario, overrides, model) in OUT/base-<commit>/,
so a rerun only redoes the head side (`--rerun-base` redoes both). The head's runs go to OUT/head/.

Both sides train the same model directory, passed as `model=/abs/path`. By default it is the
"micro" base of tests/conftest.py (64 wide, 2 layers; pretrained by `rlvr pretrain` of the base
commit in ~15 s, cached in OUT/models/micro-base); `--model tiny` uses the demo's base
(artifacts/tiny-base of this repository if it is there, else it is pretrained into OUT/models,
~5 min); `--model PATH` any Hugging Face model directory.

Only one heavy job at a time: every training or pretraining subprocess runs while this script holds
an exclusive flock(2) on /tmp/rlvr-heavy.lock, the lock `flock /tmp/rlvr-heavy.lock CMD` takes, so
these runs queue behind (and hold back) any other job started under that lock on this machine. The
lock is held for a whole scenario side (a killed run and its resume are one job).

Timing keys left out of the comparison (printed at the end): every key ending in `_s` (phase
wall-clock seconds), `_share` (ratios of those), and `tokens_per_s`-style throughput; see
`is_timing`. Every other key of every line (train and eval records alike) must be equal, and both
files must have the same lines in the same order. Exit status 0 when every pair is identical, 1
when any differs, 2 when a run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
LOCK = Path("/tmp/rlvr-heavy.lock")
DEMO = "configs/tiny_r1zero.yaml"

# The micro base of tests/conftest.py (micro_pretrain_cfg), as `rlvr pretrain` overrides.
MICRO_PRETRAIN = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=1", "model.intermediate_size=128",
                  "corpus.num_docs=4000", "train.steps=150", "train.batch_size=32", "train.warmup_steps=10",
                  "train.lr=1e-2", "train.threads=1"]

# Every scenario: one learner thread (bit-identical reruns), no progress bars or TensorBoard, a smaller
# batch and evaluation than the demo's (8 prompts x 8 samples, 16 held-out prompts every 10 steps).
COMMON = ["train.threads=1", "logging.progress=false", "logging.tensorboard=false", "train.prompts_per_step=8",
          "sampling.n=8", "eval.every=10", "eval.num_prompts=16", "eval.k=4"]


@dataclass(frozen=True)
class Scenario:
    name: str
    overrides: tuple[str, ...]
    config: str = DEMO
    kill_at: int | None = None  # resume_kill9: SIGKILL the head's run once this step is logged
    about: str = ""


SCENARIOS = [
    Scenario("static", ("engine.kind=static",), about="demo config, static engine"),
    Scenario("hf", ("engine.kind=hf",), about="demo config, HF engine"),
    Scenario("hf_workers2", ("engine.kind=hf", "cluster.rollout_workers=2"), about="2 Ray rollout workers"),
    Scenario("ranks2", ("engine.kind=static", "cluster.learner_ranks=2"), about="2 learner ranks (gloo DDP)"),
    Scenario("ppo", ("engine.kind=hf",), config="configs/ppo.yaml", about="PPO with its critic"),
    Scenario("lora", ("engine.kind=static", "lora.r=4", "lora.alpha=8"), about="LoRA adapter"),
    Scenario("async", ("engine.kind=static", "train.async=true"), about="one-step-off async"),
    Scenario("resume_kill9", ("engine.kind=static", "checkpoint.every=5"), kill_at=12,
             about="head killed (-9) after step 12, resumed; base uninterrupted"),
]
BY_NAME = {s.name: s for s in SCENARIOS}

TIMING_SUFFIXES = ("_s", "_share")
TIMING_PATTERN = re.compile(r"(per_sec|per_second|throughput|_tps$)")


def is_timing(key: str) -> bool:
    """Wall-clock dependent keys: phase seconds (`step_s`, `generate_s`, ...), their shares and rates."""
    return key.endswith(TIMING_SUFFIXES) or bool(TIMING_PATTERN.search(key))


# ---------------------------------------------------------------------------------------------- trees


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def resolve_commit(ref: str) -> str:
    return git("rev-parse", "--verify", f"{ref}^{{commit}}")


class Worktrees:
    """Detached worktrees made by this run, removed by close() unless kept."""

    def __init__(self, root: Path, keep: bool):
        self.root, self.keep, self.made, self.copies = root, keep, [], []

    def get(self, label: str, commit: str) -> Path:
        path = self.root / f"{label}-{commit[:12]}"
        if path.is_dir() and (path / ".git").exists():
            if git("rev-parse", "HEAD", cwd=path) == commit and not git("status", "--porcelain", cwd=path):
                return path
            raise SystemExit(f"{path} exists but is not a clean checkout of {commit[:12]}; remove it "
                             f"(git worktree remove --force {path})")
        self.root.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(path), commit)
        self.made.append(path)
        return path

    def snapshot(self, src: Path) -> Path:
        """A copy of what `git add -A` would commit in `src` now (tracked + untracked, not ignored)."""
        dest = self.root / "head-snapshot"
        if dest.exists():
            shutil.rmtree(dest)
        for rel in git("ls-files", "-co", "--exclude-standard", "-z", cwd=src).split("\0"):
            if rel and (src / rel).is_file():  # a tracked file deleted in the tree is listed too
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, dest / rel)
        self.copies.append(dest)
        return dest

    def close(self) -> None:
        if self.keep:
            return
        for path in self.copies:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.made:
            with contextlib.suppress(subprocess.CalledProcessError):
                git("worktree", "remove", "--force", str(path))
        with contextlib.suppress(subprocess.CalledProcessError):
            git("worktree", "prune")
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only when empty


def tree_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONHOME", None)
    return env


def check_imports(tree: Path) -> None:
    """The tree's own packages must be the ones imported (not the editable install's)."""
    code = "import json, rlvr, rollouts, verifiers; print(json.dumps({m.__name__: m.__file__ for m in (rlvr, rollouts, verifiers)}))"
    out = subprocess.run([str(PYTHON), "-c", code], cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"importing rlvr from {tree} failed:\n{out.stderr[-2000:]}")
    files = json.loads(out.stdout.strip().splitlines()[-1])
    for name, file in files.items():
        if not Path(file).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{name} was imported from {file}, not from {tree}")
    print(f"  imports from {tree}: " + ", ".join(f"{k} -> {Path(v).relative_to(tree.resolve())}" for k, v in files.items()))


# ---------------------------------------------------------------------------------------------- running


@contextlib.contextmanager
def heavy_lock():
    """The machine-wide lock of heavy jobs (the one `flock /tmp/rlvr-heavy.lock CMD` takes)."""
    with LOCK.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for {LOCK} (another heavy job holds it) ...", flush=True)
            t0 = time.monotonic()
            fcntl.flock(fh, fcntl.LOCK_EX)
            print(f"  got {LOCK} after {time.monotonic() - t0:.0f} s", flush=True)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def rlvr_cmd(*args: str) -> list[str]:
    return [str(PYTHON), "-m", "rlvr.cli", *args]


@contextlib.contextmanager
def started(cmd: list[str], tree: Path, log: Path):
    """A run in a session of its own, so that whatever it leaves behind (verifier pools, the Ray
    daemons of a killed run) is ended by its process group id once it exits, fails or is interrupted."""
    with log.open("a") as fh:
        fh.write(f"\n$ (cd {tree} && {' '.join(cmd)})\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=tree, env=tree_env(tree), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def run_to_end(cmd: list[str], tree: Path, log: Path) -> None:
    with started(cmd, tree, log) as proc:
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"exit status {rc} of {' '.join(cmd[2:5])} ... in {tree}; log {log}:\n{log.read_text()[-3000:]}")


def last_train_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    step = 0
    for line in metrics.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            rec = json.loads(line)
            if rec.get("kind") == "train":
                step = max(step, int(rec["step"]))
    return step


def checkpoints(run_dir: Path) -> list[str]:
    ck = run_dir / "checkpoints"
    return sorted(p.name for p in ck.iterdir() if p.name.startswith("step_")) if ck.is_dir() else []


def run_side(sc: Scenario, tree: Path, model: str, steps: int, run_dir: Path, log: Path, kill: bool) -> dict:
    """One scenario on one tree; with `kill`, SIGKILL it once step `sc.kill_at` is logged, then resume it."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    args = ["train", "--config", sc.config, f"model={model}", f"run_dir={run_dir}", f"train.steps={steps}",
            *COMMON, *sc.overrides]
    info: dict = {"cmd": args}
    t0 = time.monotonic()
    with heavy_lock():
        t_locked = time.monotonic()
        if not kill:
            run_to_end(rlvr_cmd(*args), tree, log)
        else:
            metrics = run_dir / "metrics.jsonl"
            with started(rlvr_cmd(*args), tree, log) as proc:
                while proc.poll() is None and last_train_step(metrics) < sc.kill_at:
                    time.sleep(0.02)
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            if rc != -signal.SIGKILL:
                raise RuntimeError(f"the run ended ({rc}) before it could be killed at step {sc.kill_at}; "
                                   f"log {log}:\n{log.read_text()[-3000:]}")
            info["killed_at_step"] = last_train_step(metrics)
            info["checkpoints_at_kill"] = checkpoints(run_dir)
            info["final_at_kill"] = (run_dir / "final").exists()
            print(f"  killed -9 after logged step {info['killed_at_step']} (checkpoints on disk: "
                  f"{', '.join(info['checkpoints_at_kill']) or 'none seen in run_dir/checkpoints'}); resuming",
                  flush=True)
            run_to_end(rlvr_cmd("train", "--resume", str(run_dir)), tree, log)
    info["wall_s"] = round(time.monotonic() - t_locked, 1)
    info["lock_wait_s"] = round(t_locked - t0, 1)
    return info


# ---------------------------------------------------------------------------------------------- model


def dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def get_model(choice: str, out: Path, tree_for_build, logs: Path) -> Path:
    """The model directory both sides train (built once with the base tree's `rlvr pretrain`)."""
    if choice not in ("micro", "tiny"):
        path = Path(choice).resolve()
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {choice}: no config.json there")
        return path
    if choice == "tiny" and (REPO / "artifacts" / "tiny-base" / "config.json").is_file():
        return (REPO / "artifacts" / "tiny-base").resolve()
    path = out / "models" / f"{choice}-base"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    tree = tree_for_build()
    overrides = [f"out_dir={path}", *(MICRO_PRETRAIN if choice == "micro" else ["train.threads=1"])]
    log = logs / f"pretrain-{choice}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"building the {choice} base model in {path} (rlvr pretrain of {tree}) ...", flush=True)
    t0 = time.monotonic()
    with heavy_lock():
        run_to_end(rlvr_cmd("pretrain", "--config", "configs/tiny_pretrain.yaml", *overrides), tree, log)
    print(f"  built in {time.monotonic() - t0:.0f} s", flush=True)
    return path


# ---------------------------------------------------------------------------------------------- compare


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # NaN in both files at the same place counts as the same value
    return type(a) is type(b) and a == b


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Comparison:
    lines: int = 0
    keys: int = 0
    values: int = 0
    first_diff: str = ""
    weights: str = ""
    skipped: set[str] = field(default_factory=set)

    @property
    def identical(self) -> bool:
        return not self.first_diff and self.weights == "yes"


def compare_metrics(a: Path, b: Path, cmp: Comparison, new_keys: frozenset[str] = frozenset()) -> None:
    """Every non-timing value of every line, exactly; ``new_keys``: metrics the head adds on purpose, left
    out (and listed) on the lines where the base lacks them and compared where it has them (a key new in
    train lines that evaluation lines always had)."""
    ra, rb = read_lines(a / "metrics.jsonl"), read_lines(b / "metrics.jsonl")
    cmp.lines = min(len(ra), len(rb))
    if len(ra) != len(rb):
        cmp.first_diff = f"line count {len(ra)} vs {len(rb)}"
    keys = set()
    for i, (x, y) in enumerate(zip(ra, rb)):
        where = f"line {i + 1} ({x.get('kind')} step {x.get('step')})"
        kx = {k for k in x if not is_timing(k)}
        # new here (a name or a glob such as staleness/*), not in base
        ky = {k for k in y if not is_timing(k) and not (k not in x and any(fnmatch.fnmatchcase(k, p) for p in new_keys))}
        cmp.skipped |= (set(x) | set(y)) - kx - ky
        if kx != ky and not cmp.first_diff:
            cmp.first_diff = f"{where}: keys only in base {sorted(kx - ky)}, only in head {sorted(ky - kx)}"
        for k in sorted(kx & ky):
            keys.add(k)
            cmp.values += 1
            if not same_value(x[k], y[k]) and not cmp.first_diff:
                cmp.first_diff = f"{where}: {k} {x[k]!r} vs {y[k]!r}"
    cmp.keys = len(keys)


def compare_weights(a: Path, b: Path, cmp: Comparison) -> None:
    import torch
    from safetensors.torch import load_file

    def load(run: Path) -> dict:
        files = sorted((run / "final").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no {run}/final/*.safetensors")
        tensors = {}
        for f in files:
            tensors.update(load_file(f))
        return tensors

    try:
        wa, wb = load(a), load(b)
    except FileNotFoundError as exc:
        cmp.weights = f"no ({exc})"
        return
    if wa.keys() != wb.keys():
        cmp.weights = f"no (names differ: {sorted(wa.keys() ^ wb.keys())[:3]})"
        return
    bad = [k for k in sorted(wa) if wa[k].dtype != wb[k].dtype or not torch.equal(wa[k], wb[k])]
    if bad:
        worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in bad
                    if wa[k].shape == wb[k].shape)
        cmp.weights = f"no ({len(bad)}/{len(wa)} tensors, first {bad[0]}, max |diff| {worst:.3g})"
    else:
        cmp.weights = "yes"


# ---------------------------------------------------------------------------------------------- main


def scenario_key(sc: Scenario, commit: str, model_digest: str, steps: int) -> str:
    spec = {"commit": commit, "config": sc.config, "overrides": [*COMMON, *sc.overrides], "steps": steps,
            "model": model_digest, "kill": False}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def print_table(rows: list[tuple], head: tuple) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for j, r in enumerate([head, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="the commit before the change (cached per commit and scenario)")
    p.add_argument("--head", default=str(REPO), help="a directory (a working tree, copied as it is "
                   f"when the script starts) or a commit (checked out in a worktree); default {REPO}")
    p.add_argument("--only", help="comma-separated scenario names (default: all); see --list")
    p.add_argument("--out", default="/tmp/compare-runs", help="results, caches and worktrees (default %(default)s)")
    p.add_argument("--model", default="micro", help="micro (default), tiny, or a model directory")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rerun-base", action="store_true", help="ignore the cached base results")
    p.add_argument("--keep-worktrees", action="store_true", help="keep the worktrees and the head snapshot")
    p.add_argument("--in-place", action="store_true", help="run a directory --head in place, not in a snapshot")
    p.add_argument("--list", action="store_true", help="print the scenarios and their overrides, and exit")
    p.add_argument("--new-keys", default="", help="comma-separated metrics (names or globs, e.g. 'staleness/*') the head adds on purpose (absent from the "
                   "base): not compared, listed with the timing keys")
    args = p.parse_args()

    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:13s} --config {sc.config} {' '.join(sc.overrides)}  # {sc.about}")
        print(f"{'(every one)':13s} train.steps={args.steps} {' '.join(COMMON)}")
        return 0
    if not args.base:
        p.error("--base is required")
    names = args.only.split(",") if args.only else [s.name for s in SCENARIOS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in names]
    if not PYTHON.is_file():
        raise SystemExit(f"no virtualenv python at {PYTHON}")

    out = Path(args.out).resolve()
    base_commit = resolve_commit(args.base)
    trees = Worktrees(out / "worktrees", args.keep_worktrees)
    base_tree: Path | None = None

    def get_base_tree() -> Path:
        nonlocal base_tree
        if base_tree is None:
            base_tree = trees.get("base", base_commit)
            check_imports(base_tree)
        return base_tree

    results, failed = [], []
    try:
        head_path = Path(args.head)
        if head_path.is_dir():
            src = head_path.resolve()
            changed = len(git("status", "--porcelain", "--untracked-files=no", cwd=src).splitlines())
            untracked = len(git("ls-files", "-o", "--exclude-standard", cwd=src).splitlines())
            head_label = (f"{src} (at {git('rev-parse', '--short', 'HEAD', cwd=src)}, {changed} tracked files changed, "
                          f"{untracked} untracked)")
            if args.in_place:
                head_tree = src
            else:
                head_tree = trees.snapshot(src)
                head_label += f", snapshot of {time.strftime('%H:%M:%S')}"
        else:
            head_commit = resolve_commit(args.head)
            head_tree, head_label = trees.get("head", head_commit), f"commit {head_commit[:12]}"
        print(f"base: commit {base_commit[:12]}\nhead: {head_label}")
        check_imports(head_tree)

        model = get_model(args.model, out, get_base_tree, out / "logs")
        model_digest = dir_digest(model)
        print(f"model: {model} (sha256 {model_digest[:12]})")

        base_root, head_root = out / f"base-{base_commit[:12]}", out / "head"
        for sc in chosen:
            print(f"\n== {sc.name}: --config {sc.config} {' '.join(sc.overrides)}", flush=True)
            key = scenario_key(sc, base_commit, model_digest, args.steps)
            bdir, hdir = base_root / f"{sc.name}-{key}", head_root / sc.name
            meta_path = bdir / "result.json"
            try:
                if meta_path.is_file() and not args.rerun_base:
                    base_info = json.loads(meta_path.read_text())
                    print(f"  base: cached ({bdir}, ran {base_info['wall_s']} s)")
                else:
                    if bdir.exists():
                        shutil.rmtree(bdir)
                    bdir.mkdir(parents=True)
                    print("  base: running ...", flush=True)
                    base_info = run_side(sc, get_base_tree(), str(model), args.steps, bdir / "run", bdir / "log.txt",
                                         kill=False)
                    meta_path.write_text(json.dumps(base_info, indent=1))
                    print(f"  base: {base_info['wall_s']} s", flush=True)
                if hdir.exists():
                    shutil.rmtree(hdir)
                hdir.mkdir(parents=True)
                print("  head: running ...", flush=True)
                head_info = run_side(sc, head_tree, str(model), args.steps, hdir / "run", hdir / "log.txt",
                                     kill=sc.kill_at is not None)
                (hdir / "result.json").write_text(json.dumps(head_info, indent=1))
                print(f"  head: {head_info['wall_s']} s", flush=True)
            except RuntimeError as exc:
                print(f"  FAILED: {exc}", flush=True)
                failed.append(sc.name)
                results.append((sc, None, None, None))
                continue
            cmp = Comparison()
            compare_metrics(bdir / "run", hdir / "run", cmp, frozenset(filter(None, args.new_keys.split(","))))
            compare_weights(bdir / "run", hdir / "run", cmp)
            print(f"  {'identical' if cmp.identical else 'DIFFERENT'}: {cmp.lines} lines, {cmp.keys} keys, "
                  f"{cmp.values} values; weights identical: {cmp.weights}" +
                  (f"; first difference: {cmp.first_diff}" if cmp.first_diff else ""), flush=True)
            results.append((sc, cmp, base_info, head_info))
    finally:
        trees.close()

    print(f"\nbase {base_commit[:12]} vs head {head_label}, {args.steps} steps each, model {model}")
    rows = []
    for sc, cmp, bi, hi in results:
        if cmp is None:
            rows.append((sc.name, "-", "-", "run failed", "-", "-", "-"))
            continue
        rows.append((sc.name, cmp.lines, cmp.keys, cmp.first_diff or "-", cmp.weights, bi["wall_s"], hi["wall_s"]))
    print_table(rows, ("scenario", "metric lines", "keys", "first difference", "weights identical", "base s",
                       "head s"))
    skipped = set().union(*(c.skipped for _, c, _, _ in results if c is not None))
    print(f"\nnot compared (timing, and --new-keys): {', '.join(sorted(skipped)) or '(none)'}")
    if failed:
        print(f"failed runs: {', '.join(failed)}")
        return 2
    differ = [sc.name for sc, c, _, _ in results if not c.identical]
    print("every pair identical" if not differ else f"differ: {', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
