"""Benchmarks of the KIIAREN SDK, each reported as ratios against a baseline measured in the
same run (see QUALITY.md). Run ``python -m bench`` (all) or ``python -m bench <name>``."""
