"""Evaluation harness: benchmark loading (`benchmarks`) and answer grading (`grading`)."""
