"""The ``agent:`` section: bring your own agent code instead of an rlvr environment (docs/agents.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AgentConfig(BaseModel):
    """An agent written against the ``openai`` client, trained through a recording server."""

    model_config = ConfigDict(extra="forbid")

    entry: str = Field(description="The agent's rollout function, 'path/to/file.py:name' or 'package.module:name': "
                       "`rollout(client, row)` (def or async def) gets an openai client (OpenAI, or AsyncOpenAI for "
                       "an async def) and the task row; it returns a reward (a number), or None to have the run's "
                       "rubric score its final model message, or a dict with 'reward' and/or 'completion' (the text "
                       "the rubric scores).")
    concurrency: int = Field(64, ge=1, description="Most agent sessions running at once (the server batches their "
                             "model calls together).")
    timeout_s: float = Field(300.0, gt=0, description="Wall-clock seconds one session may run; a session past it "
                             "is a failed sample (kept out of its group's baseline), and its later calls are refused.")
    max_batch: int = Field(64, ge=1, description="Most sequences one engine call samples (the server's batcher; "
                           "not used with the static engine, which batches the calls itself).")
    window_s: float = Field(0.05, gt=0, description="The server's batcher ends a batch after this long without a "
                            "new request (not used with the static engine, which batches the calls itself).")

    http: Literal["thread", "process"] = Field("thread", description="The server's HTTP side on a thread of the "
                                               "trainer's process, or in a process of its own (its Python then "
                                               "never takes the GIL the engine and the learner share; ~3 s more "
                                               "to start).")

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str) -> str:
        path, sep, name = value.rpartition(":")
        if not sep or not path or not name.isidentifier():
            raise ValueError(f"agent.entry: {value!r} is not 'path/to/file.py:function' or 'module:function'")
        return value
