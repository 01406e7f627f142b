"""Scale-out: rollout workers as Ray actors, a data-parallel learner on torch.distributed.

Ray is imported only here (and only when ``cluster.uses_ray``); the single-process loop never loads it.
See docs/distributed.md.
"""
