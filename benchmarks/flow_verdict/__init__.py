"""Does LML help flow-matching models? Error-vs-NFE study of the flow-matching LML scheduler against diffusers' stock
flow solvers on exact-score flow models, with classifier-free guidance and bf16/fp16 checks.

Resumable: every cell is stored atomically in a :class:`lml_sampler._io.CellStore` under ``--out`` (default
``runs/flow_verdict``); a restarted run skips finished cells and ``--report-only`` rebuilds the README section
``flow-verdict`` and ``docs/images/flow_verdict.png`` from the cells. Run from the repository root:

    python -m benchmarks.flow_verdict            # full study, updates README + plot
    python -m benchmarks.flow_verdict --quick    # smoke run in its own folder (prints the section)

Protocol (as ``benchmarks.lml_verdict``): the same initial noise for every sampler, hyperparameters tuned on seed
set 0, reported as mean ± half-range over seed sets 1 and 2, the estimator floor beside every table, the exact
transfer-matrix distance for linear samplers on the Gaussian. One concern per module: :mod:`.specs` (samplers,
grids), :mod:`.models` (benchmarks and metrics), :mod:`.runner` (cells, tuning), :mod:`.report` (Markdown, plot),
:mod:`.__main__` (the command line, the only part that writes into the repository).
"""
