"""The paper's perturbation math in plain PyTorch (no Ray, no storage)."""
