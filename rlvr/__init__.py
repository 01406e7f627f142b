"""rlvr: RL with verifiable rewards."""
