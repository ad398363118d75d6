"""The Hub: the CS-KD model card and pushes that say what to do when they fail."""
