"""The ``math`` verifier: answer extraction, equivalence with latex2sympy2_extended + sympy,
every check time-bounded in a killable worker process.

Importing this package does not import sympy; `verifiers.math.check` (loaded in workers)
does. See docs/verifiers.md for the equivalence rules, category by category.
"""

from verifiers.math.extract import DEFAULT_PRIORITY, Extraction, extract
from verifiers.math.verifier import MAX_INPUT_CHARS, MathVerifier, shared_pool

__all__ = ["MathVerifier", "extract", "Extraction", "DEFAULT_PRIORITY", "MAX_INPUT_CHARS", "shared_pool"]
