"""The python tool's ``call_format: hermes``: tools listed through the chat template's ``tools=``, calls as
``<tool_call>{json}</tool_call>``, answers as the template's tool messages. A real BPE tokenizer (merges
cross text boundaries) with a Hermes-style chat template written here; the sandbox is real; the "engine"
is a script that returns each turn's ids as a real engine would (a call's ids run through the
``</tool_call>`` it stopped at, while its text stops before it; an answer's ids end with the EOS token)."""

from __future__ import annotations

import json

import pytest
from helpers import train_and_read
from pydantic import TypeAdapter

from rlvr.envs import EnvConfig, hf_encoder, make_env
from rlvr.envs.runner import run_episodes
from rlvr.errors import DataError
from rlvr.tasks import ArithTask, render
from rollouts import Completion, Group, SamplingConfig
from verifiers import get as get_verifier

# A Hermes-style template (system turn listing the tools, <tool_call> calls, tool messages as
# <tool_response> blocks inside a user turn), written with explicit newlines so jinja's whitespace
# handling cannot change it.
HERMES_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{ 'Tools you may call:\\n<tools>' }}{%- for t in tools %}{{ '\\n' + (t | tojson) }}{%- endfor %}"
    "{{ '\\n</tools>\\nCall one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{ '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' or (m.role == 'assistant' and not m.tool_calls) %}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- elif m.role == 'assistant' %}{{ '<|im_start|>assistant\\n' + m.content }}"
    "{%- for c in m.tool_calls %}{{ '<tool_call>\\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' "
    "+ (c.function.arguments | tojson) + '}\\n</tool_call>' }}{%- endfor %}{{ '<|im_end|>\\n' }}"
    "{%- elif m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{%- endif %}"
    "{{ '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
# the same conversation markers, but the tools and tool messages left out
NO_TOOLS_TEMPLATE = ("{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                     "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
TOOLS_BUT_NO_TOOL_MESSAGES = HERMES_TEMPLATE.replace("m.role == 'tool'", "m.role == 'no such role'")
QUESTION = "What is 17 * 23?"


@pytest.fixture(scope="module")
def tok():
    """The project's byte-level BPE with Qwen's chat markers: <|im_start|> and <|im_end|> special (the
    latter EOS), <tool_call> and </tool_call> ordinary added tokens (they survive decoding, as Qwen's do)."""
    from rlvr.pretrain import local_tokenizer

    t = local_tokenizer(num_docs=200)
    t.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    t.add_tokens(["<tool_call>", "</tool_call>"])
    t.chat_template = HERMES_TEMPLATE
    return t


def decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def hermes_cfg(**fields):
    return TypeAdapter(EnvConfig).validate_python({"kind": "python", "call_format": "hermes", "max_turns": 4, **fields})


def call_text(code: str, name: str = "python", before: str = "") -> str:
    """A call as the template renders an assistant's tool call, up to the closing tag the turn stops at."""
    return before + "<tool_call>\n" + json.dumps({"name": name, "arguments": {"code": code}}) + "\n"


def prompt_ids(tok, cfg) -> list[int]:
    text = render(QUESTION, ArithTask(format="chat"), tok, cfg.tools())
    return hf_encoder(tok)(text)


class ScriptedEngine:
    """One episode's turns in order, ``(text, how)`` per engine call; ``how`` is 'call' (stopped at
    </tool_call>: the ids include it, the text does not) or 'eos' (the model ended its turn: the ids end
    with EOS, which the text leaves out). Records each call's prefixes."""

    def __init__(self, tok, turns: list[tuple[str, str]]):
        self.tok, self.turns, self.calls = tok, turns, []

    def sampled(self, text: str, how: str) -> list[int]:
        enc = hf_encoder(self.tok)
        return enc(text + "</tool_call>") if how == "call" else enc(text) + [self.tok.eos_token_id]

    def generate(self, prompts, sampling, on_group=None):
        self.calls.append(([list(p) for p in prompts], sampling))
        (p,), (text, how) = prompts, self.turns[len(self.calls) - 1]
        ids = self.sampled(text, how)
        group = Group("", list(p), [Completion(text, ids, [-1.0] * len(ids), "stop")])
        if on_group is not None:
            on_group(0, group)
        return [group]


def run_script(tok, cfg, turns: list[tuple[str, str]]):
    """The engine and the one episode whose model turns are ``turns``."""
    engine = ScriptedEngine(tok, turns)
    (episode,), = run_episodes(engine, [{"prompt_ids": prompt_ids(tok, cfg)}], SamplingConfig(n=1, max_tokens=128, seed=1),
                               cfg, hf_encoder(tok))
    return engine, episode


def test_the_prompt_lists_the_tool_through_the_chat_templates_tools(tok):
    cfg = hermes_cfg()
    text = render(QUESTION, ArithTask(format="chat"), tok, cfg.tools())
    schema = json.dumps(cfg.tools()[0])
    system = ArithTask(format="chat").system_prompt  # the task's system prompt and the tools share the system turn
    assert text.startswith(f"<|im_start|>system\n{system}\n\nTools you may call:\n<tools>\n{schema}\n</tools>")
    assert text.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert cfg.stop_strings() == ("</tool_call>",)
    assert TypeAdapter(EnvConfig).validate_python({"kind": "python"}).tools() is None  # tagged: no tools


def test_a_call_runs_and_the_episode_is_the_sampled_ids_plus_the_templates_tool_message(tok):
    cfg = hermes_cfg()
    first = call_text("print(17 * 23)", before="I will compute it.\n")
    engine, ep = run_script(tok, cfg, [(first, "call"), ("The product is <answer>391</answer>", "eos")])
    assert ep.turns == 2 and ep.finish_reason == "stop" and ep.infos[0] == {"tool_call": 1, "tool_error": 0, "status": "ok"}
    model0, obs, model1 = ep.segments
    # the observation: the end of the assistant turn (the engine stopped at </tool_call>, so it never
    # sampled <|im_end|>), the tool message, the generation prompt; its text encoded once
    assert obs.text == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n391\n</tool_response><|im_end|>\n"
                        "<|im_start|>assistant\n")
    assert list(obs.ids) == hf_encoder(tok)(obs.text)
    # token exactness: the trajectory is the sampled ids and the appended ids, nothing re-rendered
    prompt = prompt_ids(tok, cfg)
    assert list(model0.ids) == engine.sampled(first, "call") and list(model1.ids) == engine.sampled(model1.text, "eos")
    assert ep.token_ids() == prompt + list(model0.ids) + list(obs.ids) + list(model1.ids)
    assert engine.calls[1][0] == [prompt + list(model0.ids) + list(obs.ids)]  # turn 1 continued from those ids
    assert get_verifier("arith").score(ep.text(), {"answer": "391"}).correct


def test_the_episode_decodes_to_what_the_template_renders_for_the_same_conversation(tok):
    """The equivalence, explicitly: the conversation as chat messages, rendered by the template, is the
    episode's tokens decoded (the episode's ids themselves are the sampled and appended ones, above)."""
    cfg = hermes_cfg()
    thought, code, answer = "I will compute it.\n", "print(17 * 23)", "It is <answer>391</answer>"
    _, ep = run_script(tok, cfg, [(call_text(code, before=thought), "call"), (answer, "eos")])
    messages = [{"role": "system", "content": ArithTask(format="chat").system_prompt},
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": thought,
                 "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]},
                {"role": "tool", "name": "python", "content": "391"},
                {"role": "assistant", "content": answer}]
    rendered = tok.apply_chat_template(messages, tools=cfg.tools(), tokenize=False)
    # the template closes the last assistant turn with <|im_end|>\n; the episode ends where the model sampled EOS
    assert decode(tok, ep.token_ids()) + "\n" == rendered
    before_answer = tok.apply_chat_template(messages[:4], tools=cfg.tools(), tokenize=False, add_generation_prompt=True)
    assert decode(tok, ep.token_ids()[: len(ep.token_ids()) - len(ep.segments[-1].ids)]) == before_answer


def test_qwen3s_own_template_gives_the_same_episode_text_as_its_rendering(tok):
    """Nothing of Qwen's is written in rlvr: with Qwen3's chat template (as TRL ships it), whose
    generation prompt, tool messages and <think> handling differ from the template above, the observation
    comes from that template and the episode decodes to its rendering of the same conversation."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    qwen3 = getattr(pytest.importorskip("trl.chat_template_utils"), "qwen3_chat_template", None)
    if qwen3 is None:
        pytest.skip("this TRL ships no Qwen3 chat template")
    q = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()),
                                eos_token="<|im_end|>")
    q.chat_template = qwen3
    cfg = hermes_cfg()
    thought, code = "<think>\nmultiply\n</think>\n\n", "print(17 * 23)"
    engine = ScriptedEngine(q, [(call_text(code, before=thought), "call"), ("<answer>391</answer>", "eos")])
    prompt = hf_encoder(q)(render(QUESTION, ArithTask(format="chat", system_prompt=""), q, cfg.tools()))
    (ep,), = run_episodes(engine, [{"prompt_ids": prompt}], SamplingConfig(n=1, max_tokens=128), cfg, hf_encoder(q))
    assert ep.infos[0]["status"] == "ok" and ep.turns == 2
    messages = [{"role": "user", "content": QUESTION},
                {"role": "assistant", "content": thought,
                 "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]},
                {"role": "tool", "name": "python", "content": "391"}]
    rendered = q.apply_chat_template(messages, tools=cfg.tools(), tokenize=False, add_generation_prompt=True)
    assert decode(q, ep.token_ids()[: len(ep.token_ids()) - len(ep.segments[-1].ids)]) == rendered


@pytest.mark.parametrize("body, says", [
    ('{"name": "python", "arguments": {"code": "print(1)"', "not valid JSON"),
    ('{"name": "calculator", "arguments": {"code": "print(1)"}}', "unknown tool 'calculator' (tools: python)"),
    ('{"name": "python", "arguments": {"program": "print(1)"}}', "'python' is missing its argument 'code'"),
    ('{"name": "python", "arguments": "print(1)"}', "arguments of 'python' must be a JSON object, got str"),
    ('["python", "print(1)"]', 'must be a JSON object {"name"'),
    ('{"name": "python", "arguments": {"code": 17}}', "argument 'code' of 'python' must be a string"),
    ('{"name": "python", "arguments": {"code": "  "}}', "empty call"),
])
def test_a_malformed_call_is_an_error_observation_and_the_episode_goes_on(tok, body, says):
    cfg = hermes_cfg()
    turn = "<tool_call>\n" + body + "\n"
    _, ep = run_script(tok, cfg, [(turn, "call"), ("<answer>391</answer>", "eos")])
    assert ep.turns == 2 and ep.finish_reason == "stop"  # answered, then the model went on and answered
    assert ep.infos[0] == {"tool_call": 1, "tool_error": 1, "status": "malformed"}
    assert ep.info_count("tool_error") == 1 and ep.info_count("tool_call") == 1
    obs = ep.segments[1].text
    assert says in obs and obs.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\nerror: ")
    assert obs.endswith("\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_an_unclosed_call_at_eos_is_malformed_and_the_sampled_end_of_turn_is_not_repeated(tok):
    cfg = hermes_cfg()
    _, ep = run_script(tok, cfg, [('<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}', "eos"),
                                  ("<answer>1</answer>", "eos")])
    assert ep.infos[0]["status"] == "malformed" and "not closed with </tool_call>" in ep.segments[1].text
    # the model sampled <|im_end|> itself: the observation starts with the rest of the template's end of turn
    assert ep.segments[0].ids[-1] == tok.eos_token_id and ep.segments[1].text.startswith("\n<|im_start|>user\n")
    assert "<|im_end|><|im_end|>" not in decode(tok, ep.token_ids())


def test_a_turn_without_a_call_is_the_answer(tok):
    _, ep = run_script(tok, hermes_cfg(), [("No tool needed: <answer>391</answer>", "eos")])
    assert ep.turns == 1 and ep.finish_reason == "stop" and ep.infos == ({"tool_call": 0, "tool_error": 0,
                                                                          "status": "answer"},)


def test_sandbox_errors_and_long_output_keep_the_tool_message_whole(tok):
    """Shared with the tagged format: errors in words, max_output_chars. max_observation_tokens cuts the
    tool's output, not the observation's tail (which holds the generation prompt)."""
    cfg = hermes_cfg(max_observation_tokens=120, timeout_s=1.0)
    _, ep = run_script(tok, cfg, [(call_text("print('x' * 5000)"), "call"), (call_text("1 / 0"), "call"),
                                  ("<answer>0</answer>", "eos")])
    long, err = ep.segments[1], ep.segments[3]
    assert ep.infos[0]["status"] == "ok" and len(long.ids) <= 120 and long.cut == 0
    assert "[output truncated]" in long.text and long.text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert list(long.ids) == hf_encoder(tok)(long.text)
    assert ep.infos[1] == {"tool_call": 1, "tool_error": 1, "status": "runtime_error"}
    assert "error: ZeroDivisionError: division by zero\n</tool_response>" in err.text


def test_the_tagged_format_is_unchanged(tok):
    """call_format defaults to tagged: no tools in the prompt, </python> the stop string, a <tool_call> in
    the text is no call, and the observation is output_template's text."""
    cfg = TypeAdapter(EnvConfig).validate_python({"kind": "python", "max_turns": 3})
    assert cfg.call_format == "tagged" and cfg.stop_strings() == ("</python>",) and cfg.tools() is None
    assert render(QUESTION, ArithTask(format="chat"), tok, cfg.tools()) == render(QUESTION, ArithTask(format="chat"), tok)
    env = make_env(cfg, hf_encoder(tok))
    assert env.step([], call_text("print(1)"))[1] is True  # an answer, for the tagged format
    obs, done, info = env.step([], " <python>print(6 * 7)")
    assert not done and obs.text == "<output>\n42\n</output>\n" and info["status"] == "ok"


def test_config_errors_name_what_is_wrong(tok):
    from transformers import PreTrainedTokenizerFast

    cfg = hermes_cfg()
    with pytest.raises(DataError, match="needs task.format=chat"):
        render(QUESTION, ArithTask(), tok, cfg.tools())  # task.format=raw
    from tokenizers import Tokenizer

    # a copy: the module's tokenizer stays as it is
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()),
                                    eos_token="<|im_end|>")
    plain.chat_template = NO_TOOLS_TEMPLATE
    with pytest.raises(DataError, match="chat template ignores tools="):
        render(QUESTION, ArithTask(format="chat"), plain, cfg.tools())
    with pytest.raises(DataError, match="does not render role 'tool' messages"):
        plain.chat_template = TOOLS_BUT_NO_TOOL_MESSAGES
        make_env(cfg, hf_encoder(plain))
    with pytest.raises(DataError, match="marks </tool_call> as a special token"):
        plain.chat_template = HERMES_TEMPLATE
        plain.add_special_tokens({"additional_special_tokens": ["</tool_call>"]})
        make_env(cfg, hf_encoder(plain))
    with pytest.raises(DataError, match="has none"):
        plain.chat_template = None
        make_env(cfg, hf_encoder(plain))
    with pytest.raises(DataError, match="needs the model's tokenizer"):
        make_env(cfg, lambda text: [ord(c) for c in text])
    with pytest.raises(DataError, match="max_observation_tokens=8 cannot hold"):
        make_env(hermes_cfg(max_observation_tokens=8), hf_encoder(tok))
    with pytest.raises(ValueError, match="env.call_open applies to call_format=tagged"):
        hermes_cfg(call_open="<code>")


def test_a_run_config_with_hermes_calls_and_raw_prompts_is_refused_before_anything_loads(tiny_cfg):
    from rlvr.config import ConfigError

    with pytest.raises(ConfigError, match="task.format=raw: env.call_format=hermes .* needs task.format=chat"):
        tiny_cfg("env.kind=python", "env.call_format=hermes")
    assert tiny_cfg("env.kind=python", "env.call_format=hermes", "task.format=chat").env.tools()


# A compact Hermes-style template for the micro base (its context is 256 tokens): tools by name, calls as
# <tool_call>{json}</tool_call>, tool messages as their own lines.
MICRO_TEMPLATE = (
    "{%- if tools %}{{ 'tools:' }}{%- for t in tools %}{{ ' ' + t.function.name }}{%- endfor %}{{ '\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{ 'Q: ' + m.content + '\\n' }}"
    "{%- elif m.role == 'assistant' %}{{ 'A: ' + m.content }}"
    "{%- for c in m.tool_calls or [] %}{{ '<tool_call>' + ({'name': c.function.name, 'arguments': "
    "c.function.arguments} | tojson) + '</tool_call>' }}{%- endfor %}{{ '\\n' }}"
    "{%- elif m.role == 'tool' %}{{ 'T: ' + m.content + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'A:' }}{%- endif %}"
)


def test_a_chat_run_with_hermes_tool_calls_trains_two_steps(micro_model, tiny_cfg, tmp_path):
    """task.format=chat + env.call_format=hermes end to end on the micro base (static engine): the prompts list
    the tool through the template, the environment reads the template from the engine's tokenizer, the
    parity gate passes. (The micro base never learned to call a tool: this checks the wiring, the
    scripted tests above check the calls.)"""
    import shutil

    from transformers import AutoTokenizer

    from rlvr.components import build_rubric, load_rows

    model = tmp_path / "chat-model"
    shutil.copytree(micro_model, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = MICRO_TEMPLATE
    tokenizer.save_pretrained(model)
    cfg = tiny_cfg("engine.kind=static", "task.format=chat", "task.system_prompt=", "env.kind=python",
                   "env.call_format=hermes", "env.max_turns=2", "eval.num_prompts=0", model=model, run_dir=tmp_path / "run",
                   **{"train.steps": 2})
    rows = load_rows(cfg, AutoTokenizer.from_pretrained(model), build_rubric(cfg), str(model), verbose=False).train
    assert rows[0]["prompt_text"].startswith("tools: python\nQ: ") and rows[0]["prompt_text"].endswith("\nA:")
    steps, _ = train_and_read(cfg)
    assert all(r["env_errors"] == 0.0 and r["logp_diff_max"] < 1e-3 for r in steps)
