"""The trainer and its configuration: the hooks that wire targets, losses, calibration and the Hub into `Trainer`."""
