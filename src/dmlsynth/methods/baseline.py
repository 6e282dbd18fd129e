"""``baseline``: the base loss alone."""

from dmlsynth.methods.base import Method


class Baseline(Method):
    """No synthetic samples: exactly the base loss (and its miner)."""
