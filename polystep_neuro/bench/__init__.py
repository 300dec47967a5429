"""Benchmarks of polystep-neuro.  ``polystep-neuro bench`` (or ``polystep-neuro bench``) runs
them all and writes one markdown report; each ``bench/*_bench.py`` also runs on its own.
The sections and what each measures are listed in ``__main__.py`` here; ``gpu_check``
is the one-command check of a CUDA machine.
"""
