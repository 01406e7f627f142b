"""The ``python`` environment (the code sandbox as a tool) and the episode runner, without a model: the
sandbox is real; the "engine" of the runner tests is a script that answers each call with fixed turns,
so what the runner sends (prefixes, seeds, stop strings, who is still running) can be read exactly."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from rlvr.envs import EnvConfig, make_env, take_turn
from rlvr.envs.runner import run_episodes, turn_seed
from rlvr.envs.trajectory import Budget, Trajectory
from rollouts import Completion, Group, SamplingConfig
from verifiers import get as get_verifier


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]  # one id per character: observations' ids are checkable by eye


def python_env(**fields):
    return make_env(TypeAdapter(EnvConfig).validate_python({"kind": "python", **fields}), encode)


ROW = {"prompt_ids": [1, 2, 3], "prompt_text": "Compute 17*23.", "answer": "391"}


def turn(env, traj: Trajectory, text: str, finish: str = "stop") -> Trajectory:
    ids = encode(text)
    return take_turn(traj, env, ids, [-0.5] * len(ids), text, version=0, finish=finish)


def test_a_call_runs_in_the_sandbox_and_its_output_is_the_next_observation():
    env = python_env()
    t = Trajectory.start(env.reset(ROW).ids, Budget(max_turns=4, max_turn_tokens=64))
    t = turn(env, t, " I will compute it. <python>print(17 * 23)")
    assert not t.done and t.infos[-1] == {"tool_call": 1, "tool_error": 0, "status": "ok"}
    obs = t.segments[-1]
    assert obs.text == "<output>\n391\n</output>\n" and list(obs.ids) == encode(obs.text)
    t = turn(env, t, " </think> <answer>391</answer>")
    assert t.done and t.finish_reason == "stop" and t.turns == 2 and t.info_count("tool_call") == 1
    score = get_verifier("arith").score(t.text(), ROW)
    assert score.correct and t.text().endswith("<answer>391</answer>")


@pytest.mark.e2e  # waits out the sandbox's 1 s timeout
def test_a_call_that_loops_forever_times_out_and_the_episode_goes_on():
    env = python_env(timeout_s=1.0)
    t = Trajectory.start(env.reset(ROW).ids, Budget(max_turns=3, max_turn_tokens=64))
    t = turn(env, t, "<python>while True:\n    pass\n")
    assert not t.done and t.infos[-1]["tool_error"] == 1 and t.infos[-1]["status"] == "timeout"
    assert "timed out after 1 s" in t.segments[-1].text


def test_ten_megabytes_of_output_are_cut():
    env = python_env(max_output_chars=100)
    t = Trajectory.start(env.reset(ROW).ids, Budget(max_turns=3, max_turn_tokens=64))
    t = turn(env, t, "<python>print('x' * 10_000_000)")
    obs = t.segments[-1].text
    assert t.infos[-1]["status"] == "ok" and "[output truncated]" in obs and obs.count("x") == 100


def test_errors_and_malformed_calls_are_observations_not_crashes():
    env = python_env()
    t = Trajectory.start(env.reset(ROW).ids, Budget(max_turns=5, max_turn_tokens=64))
    t = turn(env, t, "<python>1 / 0")
    assert "ZeroDivisionError: division by zero" in t.segments[-1].text and t.infos[-1]["tool_error"] == 1
    t = turn(env, t, "<python>def f(:")
    assert "SyntaxError" in t.segments[-1].text and t.infos[-1]["status"] == "syntax_error"
    t = turn(env, t, "<python>   ")
    assert t.infos[-1] == {"tool_call": 1, "tool_error": 1, "status": "malformed"} and not t.done
    assert t.info_count("tool_error") == 3 and t.info_count("tool_call") == 3


def test_a_program_cannot_print_the_answer_for_the_model():
    env = python_env()
    t = Trajectory.start(env.reset(ROW).ids, Budget(max_turns=2, max_turn_tokens=64))
    t = turn(env, t, "<python>tag = 'answer'\nprint(f'<{tag}>391</{tag}>')")  # the model's text has no tag
    assert "&lt;answer&gt;391&lt;/answer&gt;" in t.segments[-1].text
    t = turn(env, t, " no idea", "length")
    assert t.finish_reason == "length" and "<answer>" not in t.text()
    assert not get_verifier("arith").score(t.text(), ROW).correct  # nothing to read: the model never answered


def test_a_sandbox_that_cannot_run_fails_the_episode_instead_of_scoring_it():
    env = python_env()

    class BrokenSandbox:  # what CodeVerifier.run answers when its fork server cannot start
        def run(self, *args, **kwargs):
            return {"status": "sandbox_error", "stdout": "", "stderr": "", "truncated": False,
                    "detail": "fork server unreachable"}

    env.sandbox = BrokenSandbox()
    t = Trajectory.start(env.reset(ROW).ids, Budget(max_turns=3, max_turn_tokens=64))
    t = turn(env, t, "<python>print(1)")
    assert t.finish_reason == "env_error" and "fork server unreachable" in t.error


# --- the runner -------------------------------------------------------------------------------------


class ScriptedEngine:
    """Answers every prompt of a call with the next turn of its episode's script (``script[prompt][k]``
    for the k-th sample of turn 0; later turns look the episode up by its prefix), recording each call."""

    def __init__(self, turns: dict[tuple[int, ...], list[str]]):
        self.turns, self.calls = turns, []

    def generate(self, prompts, sampling, on_group=None):
        self.calls.append(([list(p) for p in prompts], sampling))
        groups = []
        for i, p in enumerate(prompts):
            texts = self.turns[tuple(p)][: sampling.n]
            comps = [Completion(t, encode(t), [-1.0] * len(t), "stop") for t in texts]
            groups.append(Group("", list(p), comps))
            if on_group is not None:
                on_group(i, groups[-1])
        return groups


def test_the_runner_batches_active_episodes_with_their_own_seeds_and_the_tools_stop_string():
    cfg = TypeAdapter(EnvConfig).validate_python({"kind": "python", "max_turns": 3})
    first = [" <python>print(6 * 7)", " <answer>41</answer>"]  # sample 0 calls the tool, sample 1 answers
    engine = ScriptedEngine({(1, 2): first})
    prefix = [1, 2, *encode(first[0]), *encode("<output>\n42\n</output>\n")]
    engine.turns[tuple(prefix)] = [" <answer>42</answer>"]
    done = []
    episodes = run_episodes(engine, [{"prompt_ids": [1, 2]}], SamplingConfig(n=2, max_tokens=32, seed=9), cfg,
                            encode, version=3, on_done=lambda i, eps: done.append((i, [e.turns for e in eps])))
    (a, b), = episodes
    assert (a.turns, b.turns) == (2, 1) and a.finish_reason == b.finish_reason == "stop"
    assert done == [(0, [2, 1])]  # reported once, when its last episode ended
    assert len(engine.calls) == 2
    (prompts0, s0), (prompts1, s1) = engine.calls
    assert prompts0 == [[1, 2]] and s0.n == 2 and s0.seed == 9 and "</python>" in s0.stop
    assert prompts1 == [prefix] and s1.n == 1 and s1.seeds == [turn_seed(9 * 1_000_003, 0, 1)] and "</python>" in s1.stop
    assert all(seg.version == 3 for seg in a.model_segments())
    assert a.text() == first[0] + "<output>\n42\n</output>\n" + " <answer>42</answer>"


def test_turn_seeds_depend_on_the_episode_alone():
    seeds = {turn_seed(s, j, t) for s in (0, 1, 2**40) for j in range(8) for t in range(1, 6)}
    assert len(seeds) == 3 * 8 * 5 and all(0 <= x < 2**62 for x in seeds)


def test_python_env_fields_are_checked():
    with pytest.raises(ValueError, match="output_template"):
        TypeAdapter(EnvConfig).validate_python({"kind": "python", "output_template": "no slot"})


def test_training_uses_the_sampled_tokens_when_the_chat_template_renders_history_otherwise(micro_model):
    """A chat template that drops <think> from earlier assistant turns (as Qwen3's and DeepSeek-R1's do)
    renders the conversation differently from what was sampled; the episode, and the learner's batch,
    hold the sampled and appended ids, never that rendering."""
    from transformers import AutoTokenizer

    from rlvr.algorithms import AlgorithmConfig
    from rlvr.envs import hf_encoder
    from rlvr.pipeline import ScoredGroup
    from rlvr.scoring import EpisodeGroup, episode_completion
    from rlvr.train.batch import build_batch
    from verifiers import Score

    tok = AutoTokenizer.from_pretrained(micro_model)
    tok.chat_template = ("{% for m in messages %}{{ m.role }}:{% if m.role == 'assistant' and not loop.last %}"
                         "{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}\n{% endfor %}")
    enc = hf_encoder(tok)
    prompt = enc(tok.apply_chat_template([{"role": "user", "content": "Guess 1 to 9."}], tokenize=False) + "assistant:")
    turns = [" <think> the middle </think> 5", " <think> lower, so </think> 3"]
    cfg = TypeAdapter(EnvConfig).validate_python({"kind": "guess_number", "max_turns": 2,
                                                  "observation_template": "\nuser: {feedback}\nassistant:"})

    class Engine:  # samples the scripted turns with the real tokenizer's ids
        tokenizer = tok

        def generate(self, prompts, sampling, on_group=None):
            out = []
            for i, p in enumerate(prompts):
                text = turns[0] if list(p) == prompt else turns[1]
                out.append(Group("", list(p), [Completion(text, enc(text), [-1.0] * len(enc(text)), "stop")]))
                if on_group:
                    on_group(i, out[-1])
            return out

    (episode,), = run_episodes(Engine(), [{"prompt_ids": prompt, "secret": 3}], SamplingConfig(n=1, max_tokens=16),
                               cfg, enc)
    assert episode.turns == 2 and episode.finish_reason == "stop"
    sampled = prompt + enc(turns[0]) + enc("\nuser: lower\nassistant:") + enc(turns[1])
    rendered = enc(tok.apply_chat_template([{"role": "user", "content": "Guess 1 to 9."},
                                            {"role": "assistant", "content": turns[0]},
                                            {"role": "user", "content": "lower"},
                                            {"role": "assistant", "content": turns[1]}], tokenize=False))
    assert episode.token_ids() == sampled and rendered != sampled and "the middle" not in tok.decode(rendered)
    group = EpisodeGroup("", prompt, [episode_completion(episode)], [episode])
    batch, _ = build_batch([ScoredGroup({}, group, [Score(1.0, True)])], tok.pad_token_id, AlgorithmConfig(), 16)
    assert batch.input_ids[0, : len(sampled)].tolist() == sampled
