"""Mean ± standard error over seeds, and how many standard errors apart two such means are.

Shared by the benchmarks that repeat a run over seeds (engines_learning.py, vs_trl.py --seeds,
phases_seeds.py). Two means are "within noise" when they differ by less than two standard errors of
the difference, sqrt(se_a² + se_b²).
"""

from __future__ import annotations

import math


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def compare(a: tuple[float, float], b: tuple[float, float]) -> dict[str, float | bool]:
    """Difference of two (mean, se) pairs: ``diff`` = a - b, ``se`` of the difference, ``z`` = |diff| / se
    (inf when the seeds agree exactly within each side but the means differ), ``within_noise`` = z < 2."""
    (ma, sa), (mb, sb) = a, b
    se = math.sqrt(sa**2 + sb**2)
    z = abs(ma - mb) / se if se > 0 else (0.0 if ma == mb else math.inf)
    return {"diff": ma - mb, "se": se, "z": z, "within_noise": z < 2}
