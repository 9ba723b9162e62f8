"""Workflows built on every lower layer: the study, engine benchmarks and perturbation tuning."""
