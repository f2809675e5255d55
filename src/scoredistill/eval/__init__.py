"""Metrics of generated samples against exact data distributions."""
