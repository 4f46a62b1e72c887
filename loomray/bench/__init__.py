"""Benchmarks behind `loomray bench ...`: measured figures, never asserted in tests."""
