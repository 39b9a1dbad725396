"""The math of rlvr, as pure tensor and array functions: group advantages (advantages.py, the
ADVANTAGES registry), the policy-gradient loss and its token aggregations (losses.py, the
AGGREGATIONS registry), exact entropy, the collapse detectors and the entropy controllers
(entropy.py), and the statistics of evaluation: pass@k, HM@k and confidence intervals (stats.py).
No model, task or file is touched here, so each function can be checked against an independent
reference."""
