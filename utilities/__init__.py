"""Shared infrastructure: registries, errors, seeding, logging, checkpoints, training helpers."""
