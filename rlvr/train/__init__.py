"""The train side: episodes into tensors (``batch``), and the learners that step on them."""
