"""Data for demos, training and benchmarks.

``dnrt.data.synthetic`` renders paired H&E / IHC slides procedurally (numpy only): import it
directly; nothing is imported here so ``import dnrt.data`` stays free.
"""
