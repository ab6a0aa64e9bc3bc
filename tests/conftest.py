"""Test-wide settings."""

import os

# scipy's bundled OpenBLAS slows small problems 10-50x when it spins threads on a busy machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
