"""rlvr reward verifiers: usable on their own, without torch.

Note: the import name ``verifiers`` is also used by an unrelated PyPI package (an
RL-environments library); the two cannot be installed in one environment.
"""

from verifiers.base import FAILURE_OUTCOMES, OUTCOMES, POLICY_OUTCOMES, InfraError, Score, Verifier, missing_keys
from verifiers.batch import score_batch
from verifiers.registry import ENTRY_POINT_GROUP, available, get, register
from verifiers.rubric import Rubric

__all__ = ["Score", "Verifier", "Rubric", "get", "register", "available", "score_batch", "missing_keys",
           "ENTRY_POINT_GROUP", "OUTCOMES", "POLICY_OUTCOMES", "FAILURE_OUTCOMES", "InfraError"]
