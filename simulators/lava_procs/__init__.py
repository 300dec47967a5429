"""Custom Lava processes (Lava env only).

Lava's compiler imports every module in the directory of a custom Process to find its
models, so this package must hold nothing but Lava process code: no torch, no side effects.
"""
