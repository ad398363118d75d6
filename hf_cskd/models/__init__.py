"""Models: reading logits from any output, checks, loading from the Hub, classifier heads, the CIFAR ResNet."""
