"""patronus_ext: find, watch for and remove transferable backdoors in pre-trained language models.

The kernel ops live in :mod:`patronus_ext.ops`; ``python -m patronus_ext.info``
prints the build (versions, compiled kernels, which backend ``auto`` picks).
"""

__version__ = "0.1.0"
