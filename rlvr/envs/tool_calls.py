"""How a model calls a tool and how the answer comes back: the tool-call formats of tool environments.

* ``tagged`` (base models): the call is ``<python>code</python>`` written anywhere in the turn, the
  answer ``<output>...</output>`` text, both set by the environment's config.
* ``hermes`` (instruct models; the Hermes / Qwen2.5 / Qwen3 convention): the prompt lists the tools'
  JSON schemas through the chat template's ``tools=``, the model calls one as
  ``<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>`` and the answer is a
  ``role: tool`` message, rendered by the same template (Qwen's put it in a user turn as
  ``<tool_response>...</tool_response>``), followed by the next assistant generation prompt.

The ``hermes`` observation is learned from the template itself, not written here: ``HermesTurns``
renders a probe conversation (a user message, an assistant tool call, a tool message, the generation
prompt) and keeps the text *between* the call's ``</tool_call>`` and the tool message's content (the
end of the assistant turn and the opening of the tool message) and the text *after* the content (its
close and the generation prompt). The observation after a call is ``between + content + after``,
encoded once and appended as ids; the model's own tokens are never re-rendered. When the model's
turn ended on a special token that starts ``between`` (it sampled the end-of-turn token, e.g.
``<|im_end|>``, itself), that token's text is not repeated. So episode text equals what the template
renders for the same conversation, whatever the end-of-turn and tool-message markers of the template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlvr.errors import DataError

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
_CODE, _RESULT = "RLVRPROBECODE", "RLVRPROBERESULT"  # markers no template writes, unchanged by its tojson


@dataclass(frozen=True)
class Call:
    """A tool call read from a model turn: the tool's ``name`` and ``arguments``, or why it is malformed."""

    name: str = ""
    arguments: Mapping[str, Any] | None = None
    error: str | None = None


def tool_name(tool: Mapping[str, Any]) -> str:
    """The name of a tool's JSON schema (``{"type": "function", "function": {"name": ...}}``)."""
    return tool.get("function", tool)["name"]


def parse_hermes_call(body: str, tools: Sequence[Mapping[str, Any]]) -> Call:
    """The call in the text between ``<tool_call>`` and ``</tool_call>``, checked against the tools'
    schemas (known name, an object of arguments, required ones present, none unknown, string ones
    strings); a malformed call says what is wrong in words the model can act on."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return Call(error=f"the tool call is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return Call(error='the tool call must be a JSON object {"name": ..., "arguments": {...}}')
    schemas = {tool_name(t): t.get("function", t) for t in tools}
    name = call["name"]
    if name not in schemas:
        return Call(name, error=f"unknown tool {name!r} (tools: {', '.join(sorted(schemas))})")
    args = call.get("arguments", {})
    if not isinstance(args, dict):
        return Call(name, error=f"the arguments of {name!r} must be a JSON object, got {type(args).__name__}")
    params = schemas[name].get("parameters", {})
    props = params.get("properties", {})
    missing = [k for k in params.get("required", []) if k not in args]
    if missing:
        return Call(name, error=f"{name!r} is missing its argument {', '.join(map(repr, missing))}")
    unknown = sorted(k for k in args if k not in props)
    if unknown and props:
        return Call(name, error=f"{name!r} takes no argument {', '.join(map(repr, unknown))} "
                    f"(arguments: {', '.join(props)})")
    for k, v in args.items():
        if props.get(k, {}).get("type") == "string" and not isinstance(v, str):
            return Call(name, error=f"the argument {k!r} of {name!r} must be a string")
    return Call(name, args)


class HermesTurns:
    """The chat template's tool-call turns (see the module doc): reads a call from a model turn and
    writes the observation that answers it. Built from the tokenizer; a template that does not render
    ``<tool_call>`` calls or ``role: tool`` messages is a DataError naming what is missing."""

    def __init__(self, tokenizer: Any, tools: Sequence[Mapping[str, Any]]):
        if tokenizer is None:
            raise DataError("env.call_format=hermes needs the model's tokenizer (its chat template): this engine "
                            "gives the environment none")
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("env.call_format=hermes needs a tokenizer with a chat template; this model's has none "
                            "(use env.call_format=tagged)")
        special = [t for t in (HERMES_OPEN, HERMES_CLOSE) if t in tokenizer.all_special_tokens]
        if special:  # engines decode without special tokens: the call would vanish from the text, the stop never fire
            raise DataError(f"env.call_format=hermes: this tokenizer marks {special[0]} as a special token, which "
                            "decoded text drops; it must be an ordinary (added) token")
        self.tokenizer, self.tools = tokenizer, list(tools)
        self.between, self.after = self._probe()
        self._special = {tokenizer.convert_ids_to_tokens(i): i for i in tokenizer.all_special_ids}

    def _probe(self) -> tuple[str, str]:
        name = tool_name(self.tools[0])
        arg = next(iter(self.tools[0].get("function", self.tools[0]).get("parameters", {}).get("properties", {})), "x")
        call = {"type": "function", "function": {"name": name, "arguments": {arg: _CODE}}}
        messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "name": name, "content": _RESULT}]
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as exc:  # a template that refuses tool messages (jinja's raise_exception)
            raise DataError(f"env.call_format=hermes: the chat template cannot render a tool call and its answer "
                            f"({type(exc).__name__}: {exc})") from exc
        at = text.find(_RESULT)
        if at < 0 or text.count(_RESULT) != 1:
            raise DataError("env.call_format=hermes: the chat template does not render role 'tool' messages (a tool's "
                            "answer would never reach the model); use a template with tool support or call_format=tagged")
        close = text.rfind(HERMES_CLOSE, 0, at)
        opened = text.rfind(HERMES_OPEN, 0, close)
        if close < 0 or opened < 0 or _CODE not in text[opened:close]:
            raise DataError(f"env.call_format=hermes: the chat template does not render an assistant's tool call as "
                            f"{HERMES_OPEN}{{json}}{HERMES_CLOSE} (not a Hermes-style template); use call_format=tagged")
        return text[close + len(HERMES_CLOSE): at], text[at + len(_RESULT):]

    def read(self, turn_ids: Sequence[int], turn_text: str) -> Call | None:
        """The turn's call, or None when it calls nothing (it is the answer). The engine's text stops
        before ``</tool_call>`` (the stop string), so a call is the text after the turn's first
        ``<tool_call>``; one the model did not close (it ended the turn, or ran out of tokens) is malformed."""
        start = turn_text.find(HERMES_OPEN)
        if start < 0:
            return None
        sampled = self.tokenizer.decode(list(turn_ids), skip_special_tokens=False)
        if HERMES_CLOSE not in sampled[sampled.find(HERMES_OPEN):]:
            return Call(error=f"the tool call was not closed with {HERMES_CLOSE}")
        return parse_hermes_call(turn_text[start + len(HERMES_OPEN):].strip(), self.tools)

    def observation_text(self, turn_ids: Sequence[int], content: str) -> str:
        """What the template puts after the turn ``turn_ids`` and a tool message of ``content``, up to
        and including the next generation prompt."""
        between = self.between
        if turn_ids:
            last = self.tokenizer.convert_ids_to_tokens(int(turn_ids[-1]))
            if last in self._special and between.startswith(last):  # the model sampled the end of its turn
                between = between[len(last):]
        return between + content + self.after

    def observation(self, turn_ids: Sequence[int], content: str, encode: Any,
                    max_tokens: int | None = None) -> tuple[str, list[int]]:
        """The observation's text and ids (encoded once). With ``max_tokens``, a content too long for it is
        cut (its head kept, ``TRUNCATED`` said) so the whole observation fits: the trajectory's own cut keeps
        an observation's head, which here would drop the tool message's close and the generation prompt."""
        text = self.observation_text(turn_ids, content)
        ids = encode(text)
        kept = content
        while max_tokens is not None and len(ids) > max_tokens:
            if not kept:  # check_budget at build time rules this out
                raise DataError(f"env.max_observation_tokens={max_tokens} cannot hold the chat template's tool message")
            kept = kept[: min(len(kept) - 1, len(kept) * max_tokens // len(ids))]
            text = self.observation_text(turn_ids, kept + TRUNCATED)
            ids = encode(text)
        return text, ids

    def check_budget(self, encode: Any, max_tokens: int | None) -> None:
        """A DataError when ``max_tokens`` (env.max_observation_tokens) cannot hold a tool message whose
        output is cut to nothing (the template's own text around it)."""
        if max_tokens is None:
            return
        need = len(encode(self.observation_text([], TRUNCATED)))
        if need > max_tokens:
            raise DataError(f"env.max_observation_tokens={max_tokens} cannot hold the chat template's tool message "
                            f"even with no output ({need} tokens); raise it or leave it unset")


TRUNCATED = "\n[output truncated]"
