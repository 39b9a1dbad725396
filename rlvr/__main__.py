"""`python -m rlvr ...` is the `rlvr` command; `torchrun --nproc-per-node N -m rlvr train ...` runs it
as N ranks (docs/distributed.md)."""
import sys

from rlvr.cli import main

sys.exit(main())
