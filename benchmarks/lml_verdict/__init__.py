"""Does LML help? Error-vs-NFE study of the LML variants against stock diffusers solvers on exact-score models.

Resumable: every (benchmark, sampler, NFE, seed set) cell is stored atomically under ``--out`` (default
``runs/lml_verdict``); a restarted run skips finished cells, and ``--report-only`` rebuilds the README section
``verdict`` and the plots ``docs/images/lml_verdict*.png`` from the cells alone. Run from the repository root:

    python -m benchmarks.lml_verdict                 # full study (~30-40 CPU minutes), updates README + plots
    python -m benchmarks.lml_verdict --quick         # smoke run (small N, NFE 5/10, reduced grids), own folder
    python -m benchmarks.lml_verdict --report-only   # regenerate README section and plots from the cells

One concern per module: :mod:`.specs` (samplers, grids, labels), :mod:`.estimators` (Fréchet estimators),
:mod:`.benchmarks` (models, metrics, floors), :mod:`.runner` (cells, tuning, results), :mod:`.report` (Markdown,
plots) and :mod:`.__main__` (the command line, the only part that writes into the repository).
"""
