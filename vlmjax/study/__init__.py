"""Controlled studies: one base config x axes (objective, model size, data, steps, seed, any key)
expanded into ordinary runs, run here, on SLURM or on a TPU slice (`python -m vlmjax.study`), and
read back by `python -m vlmjax.report STUDY_DIR` (tables over seeds, scaling fits)."""
