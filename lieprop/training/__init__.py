"""Training and evaluation on QM9."""
