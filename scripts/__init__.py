"""Training and maintenance scripts of the repository, run from its root as ``python -m scripts.<name>``."""
