"""Calibration: metrics, temperature scaling baked into the head, the reliability diagram, the `evaluate` module."""
