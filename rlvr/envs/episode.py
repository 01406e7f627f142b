"""One model turn of one episode, through its environment: the step a runner takes per episode
once the engine has sampled that episode's next turn (the runner, rlvr.envs.runner, calls it for every episode)."""

from __future__ import annotations

from rlvr.envs.base import Env
from rlvr.envs.trajectory import Trajectory, append_turn, fail, record_step


def take_turn(traj: Trajectory, env: Env, sampled_ids: list[int], logprobs: list[float], text: str,
              version: int | list[int], finish: str = "stop") -> Trajectory:
    """``traj`` after the model's turn (``append_turn``) and the environment's answer to it
    (``record_step``). A turn that ends the episode by a budget is not shown to the environment.
    An environment that raises ends the episode with ``env_error`` (the error kept on the
    trajectory): a broken environment is not the policy's doing and must not look like reward 0."""
    traj = append_turn(traj, sampled_ids, logprobs, version, finish, text)
    if traj.done:
        return traj
    try:
        obs, done, info = env.step(list(traj.segments[-1].ids), text)
    except Exception as exc:  # recorded on the episode and counted, never trained on as a zero
        return fail(traj, f"{type(exc).__name__}: {exc}")
    return record_step(traj, None if obs is None else obs.ids, done, info, "" if obs is None else obs.text)
