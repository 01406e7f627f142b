"""``python``: the code sandbox as a tool, for any task (arith, gsm8k, math, countdown, ...).

A model turn that opens a call, ``<python>print(17 * 23)</python>``, ends at the closing tag (a stop
string of every turn); the code runs as a script in the sandbox (verifiers.code: a fresh process per
call, no network, a private temporary directory, CPU time and memory limits, nothing outlives the
call) and its output comes back as the next observation, ``<output>\n391\n</output>\n``. A turn
without a call is the answer and ends the episode; the rubric scores the episode's text as for any task.

* Per call: ``timeout_s`` of wall time (CPU time ``ceil(timeout_s) + 1``), ``memory_mb`` of address
  space, at most ``max_output_chars`` of output (the rest is dropped and said so); the observation
  can be cut further to ``max_observation_tokens``.
* A call that fails (exception, syntax error, timeout, memory) answers with its error in the
  observation (the stderr's last line, or what limit it hit) and counts as a tool error; an empty
  call is malformed and answered the same way. Neither ends the episode: the policy sees what it did.
* A sandbox that cannot run at all (it failed to start, a worker died) raises: the episode ends
  with ``env_error`` and is not scored (the infrastructure's fault, not the policy's).
* ``<answer>`` tags a program prints are escaped in the observation, so a tool's output can never
  stand in for the model's answer.

``info`` per step: ``tool_call`` (1 when the turn called the tool), ``tool_error`` (1 when that call
failed or was malformed) and ``status``.

``call_format``: ``tagged`` (above, for base models) or ``hermes`` (instruct models: the tool's JSON
schema is in the prompt through the chat template's ``tools=``, the model calls
``<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>`` and the output comes back
as the template's tool message; rlvr.envs.tool_calls). A hermes call that is not valid JSON, names
another tool, lacks ``code`` or gives arguments that are not an object is malformed, answered with what
was wrong. Both formats share everything past reading the call: the sandbox, its limits, the escaping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from rlvr.envs.base import Encode, EnvBase, Observation, prompt_observation, register_env
from rlvr.envs.tool_calls import HERMES_CLOSE, Call, HermesTurns

# The tool as a chat template's ``tools=`` lists it (a JSON schema, the form transformers' templates take).
PYTHON_TOOL = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run a Python program in a sandbox (no network, limited time and memory) and see what it "
                       "prints.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The program; print what you want to see."}},
            "required": ["code"],
        },
    },
}
_TAGGED_ONLY = ("call_open", "call_close", "output_template")


class PythonToolConfig(EnvBase):
    """The sandbox as a Python tool the policy calls with tagged code or through the chat template's tool calls."""

    kind: Literal["python"] = "python"
    call_format: Literal["tagged", "hermes"] = Field(
        "tagged", description="How the model calls the tool: 'tagged' (base models: call_open code call_close, "
        "answered through output_template) or 'hermes' (instruct models, needs task.format=chat: the tool's schema "
        "in the prompt through the chat template's tools=, <tool_call>{json}</tool_call> calls, answers as the "
        "template's tool messages).")
    max_turns: int = Field(4, ge=1, description="Most model turns (tool calls plus the answer) in one episode.")
    call_open: str = Field("<python>", description="Opens a tool call in a model turn.")
    call_close: str = Field("</python>", description="Closes a tool call; the turn ends there (a stop string).")
    output_template: str = Field("<output>\n{output}</output>\n", description="How a call's result is shown to "
                                 "the model; {output} is what it printed, or its error.")
    timeout_s: float = Field(5.0, gt=0, description="Wall-clock seconds per call.")
    memory_mb: int = Field(256, ge=64, description="Address-space limit of a call's process, in MiB.")
    max_output_chars: int = Field(1000, ge=1, description="A call's output is cut to this many characters.")

    @model_validator(mode="after")
    def _template(self) -> PythonToolConfig:
        if "{output}" not in self.output_template:
            raise ValueError("env.output_template must contain '{output}'")
        if not self.call_open or not self.call_close:
            raise ValueError("env.call_open and env.call_close must not be empty")
        if self.call_format == "hermes":
            changed = [k for k in _TAGGED_ONLY if getattr(self, k) != type(self).model_fields[k].default]
            if changed:
                raise ValueError(f"env.{changed[0]} applies to call_format=tagged; hermes calls are "
                                 f"<tool_call>{{json}}{HERMES_CLOSE}, answered through the chat template")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        return (HERMES_CLOSE,) if self.call_format == "hermes" else (self.call_close,)

    def tools(self) -> list[dict] | None:
        return [PYTHON_TOOL] if self.call_format == "hermes" else None


def _escape_answer_tags(text: str) -> str:
    return text.replace("<answer>", "&lt;answer&gt;").replace("</answer>", "&lt;/answer&gt;")


def _error_line(stderr: str) -> str:
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


class PythonTool:
    def __init__(self, cfg: PythonToolConfig, encode: Encode):
        from verifiers.code import CodeVerifier

        self.cfg, self.encode = cfg, encode
        self.sandbox = CodeVerifier(timeout=cfg.timeout_s, memory_mb=cfg.memory_mb)
        self.hermes = None
        if cfg.call_format == "hermes":  # the tokenizer's chat template writes the turns around a call
            self.hermes = HermesTurns(getattr(encode, "tokenizer", None), cfg.tools() or [])
            self.hermes.check_budget(encode, cfg.max_observation_tokens)

    def reset(self, row: Mapping[str, Any]) -> Observation:
        return prompt_observation(row, "python")

    def call_of(self, text: str) -> str | None:
        """The code of the turn's trailing tagged call (the turn ended at the closing tag, which the
        engine's text leaves out), or None when the turn calls nothing."""
        start = text.rfind(self.cfg.call_open)
        if start < 0:
            return None
        code = text[start + len(self.cfg.call_open):]
        if self.cfg.call_close in code:  # a closed call followed by more text: the turn went on, no pending call
            return None
        return code

    def read(self, model_turn_ids: list[int], model_turn_text: str) -> Call | None:
        """The turn's call in the configured format (None: no call, the turn is the answer)."""
        if self.hermes is not None:
            call = self.hermes.read(model_turn_ids, model_turn_text)
        else:
            code = self.call_of(model_turn_text)
            call = None if code is None else Call("python", {"code": code})
        if call is not None and call.error is None and not call.arguments["code"].strip():
            return Call("python", error="empty call")
        return call

    def step(self, model_turn_ids: list[int], model_turn_text: str) -> tuple[Observation | None, bool, dict[str, Any]]:
        call = self.read(model_turn_ids, model_turn_text)
        if call is None:
            return None, True, {"tool_call": 0, "tool_error": 0, "status": "answer"}
        if call.error is not None:
            return (self._say(model_turn_ids, f"error: {call.error}"), False,
                    {"tool_call": 1, "tool_error": 1, "status": "malformed"})
        out, status = self.run(call.arguments["code"])
        return self._say(model_turn_ids, out), False, {"tool_call": 1, "tool_error": int(status != "ok"), "status": status}

    def run(self, code: str) -> tuple[str, str]:
        """The call's output (or its error, in words) and status; a sandbox that cannot run raises."""
        result = self.sandbox.run(code, max_output_bytes=4 * self.cfg.max_output_chars)
        status = result["status"]
        if status == "sandbox_error":  # the sandbox's fault: the episode is marked failed, never scored 0
            raise RuntimeError(f"python tool: the sandbox could not run the call: {result['detail']}")
        out = result["stdout"]
        if status == "ok":
            cut = len(out) > self.cfg.max_output_chars or result["truncated"]
            out = out[: self.cfg.max_output_chars] + ("\n[output truncated]\n" if cut else "")
        elif status == "timeout":
            out = f"error: timed out after {self.cfg.timeout_s:g} s\n"
        elif status == "memory":
            out = f"error: out of memory ({self.cfg.memory_mb} MiB)\n"
        else:
            out = f"error: {_error_line(result['stderr']) or status}\n"
        return out, status

    def _say(self, model_turn_ids: list[int], output: str) -> Observation:
        output = _escape_answer_tags(output)
        if self.hermes is not None:  # the tool message's content: the output without print's last newline
            text, ids = self.hermes.observation(model_turn_ids, output.removesuffix("\n"), self.encode,
                                                self.cfg.max_observation_tokens)
            return Observation(ids, text)
        text = self.cfg.output_template.format(output=output)
        return Observation(self.encode(text), text)


@register_env("python", PythonToolConfig)
def build(cfg: PythonToolConfig, encode: Encode) -> PythonTool:
    return PythonTool(cfg, encode)
