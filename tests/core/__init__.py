"""Tests of ``kiiaren_core``, the contract package (mirrors ``src/kiiaren_core``)."""
