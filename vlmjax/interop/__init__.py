"""Weights from and to other frameworks: `python -m vlmjax.convert` and the export helpers."""
