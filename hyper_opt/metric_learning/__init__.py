"""The built-in metric-learning objective (pytorch-metric-learning)."""
