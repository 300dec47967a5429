"""The run floor: everything that runs an adaptation for a user, on top of the other floors.

The loop (``controller``), the recipe that sets it up, the one-call API (``api``), the
``polystep-neuro`` command (``cli``, ``adapt_job``, ``convert``, ``demo``), the data, losses
and scores it needs, and the converters to and from the tools users train in (``interop``).
Only this floor (and the benchmarks above it) opens device backends.
"""
