"""Rollouts: prompts -> K samples each -> a scored RolloutBatch, and the forward that trains on it.

sample.py decodes the groups (shared prompt prefill, exact token entropy from the sampling
logits); forward.py is the training-side forward (packed rows, micro-batches); strategies.py
chooses what a step samples and trains on (the prompt stream, per-group sampling noise, DAPO's
group filter, PODS down-sampling, adaptive K) and scores it with the reward pool.
"""
