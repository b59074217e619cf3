"""Structured pruning: remove whole FFN neurons and attention heads, giving a smaller dense model."""
