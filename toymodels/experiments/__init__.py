"""Toy experiments: each trains its SAEs as one stack and writes a run folder."""
