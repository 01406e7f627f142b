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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from rlvr.envs.base import Encode, EnvBase, Observation, prompt_observation, register_env


class PythonToolConfig(EnvBase):
    """The sandbox as a Python tool the policy calls with tagged code."""

    kind: Literal["python"] = "python"
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
        return self

    def stop_strings(self) -> tuple[str, ...]:
        return (self.call_close,)


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

    def reset(self, row: Mapping[str, Any]) -> Observation:
        return prompt_observation(row, "python")

    def call_of(self, text: str) -> str | None:
        """The code of the turn's trailing call (the turn ended at the closing tag, which the engine's
        text leaves out), or None when the turn calls nothing."""
        start = text.rfind(self.cfg.call_open)
        if start < 0:
            return None
        code = text[start + len(self.cfg.call_open):]
        if self.cfg.call_close in code:  # a closed call followed by more text: the turn went on, no pending call
            return None
        return code

    def step(self, model_turn_ids: list[int], model_turn_text: str) -> tuple[Observation | None, bool, dict[str, Any]]:
        code = self.call_of(model_turn_text)
        if code is None:
            return None, True, {"tool_call": 0, "tool_error": 0, "status": "answer"}
        if not code.strip():
            return self._say("error: empty call"), False, {"tool_call": 1, "tool_error": 1, "status": "malformed"}
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
        return self._say(out), False, {"tool_call": 1, "tool_error": int(status != "ok"), "status": status}

    def _say(self, output: str) -> Observation:
        text = self.cfg.output_template.format(output=_escape_answer_tags(output))
        return Observation(self.encode(text), text)


@register_env("python", PythonToolConfig)
def build(cfg: PythonToolConfig, encode: Encode) -> PythonTool:
    return PythonTool(cfg, encode)
