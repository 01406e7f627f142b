"""``rlvr bench rollouts --serve-sessions``: agent sessions through the recording server beside the same
requests in process, on the micro base."""

from __future__ import annotations

import json


def test_serve_sessions_bench_reports_both_sides(micro_model, capsys):
    from rlvr.cli import main

    assert main(["bench", "rollouts", "--model", micro_model, "--engines", "static", "--serve-sessions", "4",
                 "--serve-turns", "2", "--turn-tokens", "8", "--repeats", "1", "--serve-clients", "both", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    [r] = result["rounds"]
    assert (result["sessions"], result["turns"], result["engine"]) == (4, 2, "static")
    assert r["engine_prompts"] == 8  # every session's two calls reached the engine, each once
    assert r["continuous"]  # the static engine batches by itself: the prompts join its running batch
    # the same calls with the same seeds: the same tokens every way (the engine's samples do not depend on
    # the batch they share)
    # the clients in a process of their own (the ratio's way) and in threads of the server's process alike
    assert r["in_process_tokens"] == r["pipelined_tokens"] == r["server_tokens"] == r["threads_tokens"] > 0
    assert result["clients"] == "both" and result["threads_ratio_median"] == r["threads_ratio"]
    assert result["ratio_median"] == r["server_tps"] / max(r["in_process_tps"], r["pipelined_tps"])


def test_serve_sessions_needs_a_trainable_engine(micro_model, capsys):
    from rlvr.cli import main

    assert main(["bench", "rollouts", "--model", micro_model, "--engines", "hf-generate",
                 "--serve-sessions", "4"]) != 0
    assert "--serve-sessions serves a plain static, vllm or hf engine" in capsys.readouterr().err


def test_the_split_layout_with_the_http_process_samples_the_same_tokens(micro_model, capsys):
    """``--serve-layout split --serve-http process``: the engine pinned to its half of the cores with one torch
    thread per core, the HTTP process and the clients on the rest; the same tokens every way, and this
    process's cores and threads given back afterwards."""
    import os

    import pytest
    import torch

    from rlvr.cli import main

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the split layout needs 2 cores")
    cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
    assert main(["bench", "rollouts", "--model", micro_model, "--engines", "static", "--serve-sessions", "4",
                 "--serve-turns", "2", "--turn-tokens", "8", "--repeats", "1", "--serve-http", "process",
                 "--serve-layout", "split", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    [r] = result["rounds"]
    assert (result["http"], result["layout"], r["engine_prompts"]) == ("process", "split", 8)
    assert r["in_process_tokens"] == r["pipelined_tokens"] == r["server_tokens"] > 0
    assert os.sched_getaffinity(0) == cores and torch.get_num_threads() == threads
    assert main(["bench", "rollouts", "--model", micro_model, "--engines", "static", "--serve-sessions", "4",
                 "--serve-layout", "split", "--serve-clients", "threads"]) != 0
    assert "--serve-layout split puts the agents' clients on the HTTP side's cores" in capsys.readouterr().err
