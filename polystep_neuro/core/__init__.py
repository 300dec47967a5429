"""The ground floor: the vocabulary every other part of the project shares.

``network`` (the neutral ``NetworkSpec``), ``batch`` (a ``CheckedBatch`` of parameter sets and
inputs, checked once), ``contract`` (the forward-only ``Backend`` protocol and its
``Capabilities``) and ``errors`` (the typed errors that cross the wire).  It imports nothing
else of the project, and nothing heavier than numpy: the Lava env (Python 3.10, no torch)
imports it on its side of the wire.
"""
