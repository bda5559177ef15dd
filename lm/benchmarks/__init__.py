"""Benchmarks of lm itself (training speed, model file sizes); the library benchmarks are in
the repository's benchmarks/ folder, which does not import lm."""
