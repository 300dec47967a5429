"""Benchmarks of polystep-neuro.  ``python -m bench`` runs them all and writes a markdown
report (``--out docs/benchmarks.md``); each ``bench/*_bench.py`` also runs on its own.

Sections: ``sim`` (torch-sim vs a per-vertex snnTorch loop), ``digits`` (PolyStep vs
sep-CMA-ES / OpenAI-ES / SPSA training a digits SNN at equal forward passes), ``memory``
(forward-only evaluation vs BPTT with a surrogate gradient), ``lava`` (V replicas in one
Lava graph vs one vertex at a time; needs the Lava venv) and ``protocol`` (the wire
protocol vs raw pyzmq).
"""
