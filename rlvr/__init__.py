"""rlvr: reinforcement learning with verifiable rewards, built to make the group size K visible."""

__version__ = "0.2.0"
