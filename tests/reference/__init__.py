"""Brute-force references written independently of ``src/foresight`` (dense Jacobians,
per-example autograd loops, pairwise loops, closed forms). Tests compare the library to these."""
