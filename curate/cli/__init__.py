"""The Typer command-line interface (the only place that imports typer and rich)."""

import os

# OpenMP threads that spin while they wait collapse when other processes use the cores (measured on 2
# busy cores: a training step 1.9-4.1 s with spinning threads, 0.8-0.9 s with passive ones). Set before
# torch is imported; a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
