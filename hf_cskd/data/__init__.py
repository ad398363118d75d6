"""Data: label reading, bad-file errors, seeded per-row randomness, image transforms."""
