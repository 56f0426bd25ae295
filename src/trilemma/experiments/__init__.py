"""Experiments on real and simulated models: task suites and calibration."""
