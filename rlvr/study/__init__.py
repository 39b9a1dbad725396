"""Studies built from training runs: `rlvr compare` (compare.py: arms × seeds, run side by side),
`rlvr plan` (plan.py: the measured cost of each K and its expected zero-signal groups), and the
report (report/: tables, plots, verdicts) that `rlvr compare` and `rlvr report` write."""
