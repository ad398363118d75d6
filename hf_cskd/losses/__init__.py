"""The loss terms: CS-KD, teacher distillation, Mixup/CutMix label mixing, and their logs."""
