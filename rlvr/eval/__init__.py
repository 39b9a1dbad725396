"""Evaluation of a policy on a task's held-out problems (runner.py); the numbers it reports are
computed by rlvr.algo.stats."""
