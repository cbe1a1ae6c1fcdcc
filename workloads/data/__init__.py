"""Seeded, physics-flavoured data generators for the workloads, with an exact-key disk cache.

Every generator is a pure function of (its parameters, seed, split, sample index block), so a
prefix of a larger split equals the smaller split and every array is reproducible bit for bit.
"""

from .cache import SPLITS, Generated, generate_split

__all__ = ["SPLITS", "Generated", "generate_split"]
