"""The server reuses a session's sampled ids when an agent sends its history back as text (rlvr.serve.app),
so the session chains into one exact sequence (rlvr.agents.sequences) even where re-tokenising the
text would give other ids: here the engine samples 'a' and 'b' as two tokens, while the tokenizer
writes "ab" as one."""

from __future__ import annotations

import openai
from helpers import byte_tokenizer
from transformers import PreTrainedTokenizerFast

from rlvr.agents.sequences import session_sequences
from rlvr.envs.trajectory import Source
from rlvr.serve import Server
from rollouts import Completion, EngineBase, Group

TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if m.role == 'assistant' %}<eos>{% endif %}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def merging_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte, plus the merge 'a' 'b' -> 'ab'."""
    return byte_tokenizer(TEMPLATE, merges=(("a", "b"),))


class SplitEngine(EngineBase):
    """Samples 'a', 'b' as two tokens, then EOS, for every prompt."""

    def __init__(self):
        self._set_tokenizer(merging_tokenizer())

    def _generate(self, prompt_ids, texts, seeds, sampling, finished):
        tok = self.tokenizer
        ids = [tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b"), tok.eos_token_id]
        groups = []
        for i, text in enumerate(texts):
            groups.append(Group(text, prompt_ids[i], [Completion("ab", ids, [-0.5] * 3, "stop")]))
            finished(i, groups[-1])
        return groups


def test_text_history_reuses_the_sampled_ids():
    tok = merging_tokenizer()
    a, b, ab, eos = (tok.convert_tokens_to_ids(t) for t in ("a", "b", "ab", "<eos>"))
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert enc("xyab") == enc("xy") + [ab]  # re-tokenised, the sampled pair would be one other token
    with Server(SplitEngine(), tok, "m") as server:
        # completions: the agent continues the text it got (the EOS it never saw is left out)
        c = openai.OpenAI(base_url=server.session_url("done"), api_key=server.api_key, max_retries=0)
        first = c.completions.create(model="m", prompt="xy", max_tokens=4)
        c.completions.create(model="m", prompt="xy" + first.choices[0].text + "c", max_tokens=4)
        calls = server.records.pop("done")
        assert calls[1].prompt_ids == enc("xy") + [a, b] + enc("c")
        (seq,) = session_sequences(calls, end_ids={eos})
        assert seq.token_ids() == enc("xy") + [a, b] + enc("c") + [a, b, eos]
        assert [s for s, m in zip(seq.token_ids(), seq.sources()) if m == Source.MODEL] == [a, b, a, b, eos]
        # chat: the template writes the assistant's message and its end of turn (the sampled EOS) back
        c = openai.OpenAI(base_url=server.session_url("chat"), api_key=server.api_key, max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        reply = c.chat.completions.create(model="m", messages=messages, max_tokens=4).choices[0].message.content
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
        c.chat.completions.create(model="m", messages=messages, max_tokens=4)
        calls = server.records.calls("chat")
        assert calls[1].prompt_ids == calls[0].prompt_ids + [a, b, eos] + enc("<|user|>more<|assistant|>")
        (seq,) = session_sequences(calls, end_ids={eos})
        assert seq.turns == 2 and seq.token_ids() == calls[1].prompt_ids + [a, b, eos]
        # edited history (the reply rewritten): tokenised as sent, and the session becomes two sequences
        messages[1]["content"] = "x" + reply
        c.chat.completions.create(model="m", messages=messages, max_tokens=4)
        calls = server.records.pop("chat")
        assert calls[2].prompt_ids == enc(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        assert ab in calls[2].prompt_ids
        seqs = session_sequences(calls, end_ids={eos})
        assert [len(s.prompt_ids) for s in seqs] == [len(calls[0].prompt_ids), len(calls[2].prompt_ids)]
        assert sum(s.model_tokens() for s in seqs) == 9  # three calls of three sampled tokens, each trained once
        # a request without a session is tokenised as sent (nothing recorded to continue)
        r = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        assert r.completions.create(model="m", prompt="xyabc", max_tokens=4).usage.prompt_tokens == len(enc("xyabc"))
