"""Patronus detection (docs/METHODS.md §1): the searchable vocabulary, multi-trigger contrastive search,
verification, target groups, the scan and threshold calibration."""
