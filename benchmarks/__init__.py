"""Scripts that measure and regenerate the README's result tables, run from the repository root as
``python -m benchmarks.<name>``. They import the installed ``lml_sampler`` package; none is a test."""
