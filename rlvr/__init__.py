"""rlvr: RL with verifiable rewards."""

# registers the torch-backed reward verifiers (reward_model) with the verifiers registry; imports no torch
import rlvr.rewards  # noqa: F401
