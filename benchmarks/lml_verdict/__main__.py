"""Does LML help? Run the error-vs-NFE study of the LML variants and regenerate its README section.

    python -m benchmarks.lml_verdict [--quick] [--report-only] [--out DIR] [--no-readme] [--benchmarks LIST]

Only a full run (neither ``--quick`` nor ``--no-readme``) writes into the repository: the README section ``verdict``
and ``docs/images/lml_verdict*.png``. Otherwise the plots stay in the run folder and the section is printed.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch

from benchmarks.readme import publish_image, update_readme_section

from .benchmarks import BENCHMARKS
from .report import markdown, write_plots
from .runner import collect_all, run_benchmark
from .specs import REPORT_SEEDS, TUNE_SEED


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lml_verdict", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, NFE 5/10, reduced grids, seeds 0/1")
    ap.add_argument("--out", type=Path, default=None, help="cell folder (default runs/lml_verdict[_quick])")
    ap.add_argument("--benchmarks", default="gaussian,empirical,gmm,bundled",
                    help="comma-separated subset of " + ",".join(BENCHMARKS))
    ap.add_argument("--report-only", action="store_true", help="only rebuild the README section and plots")
    ap.add_argument("--no-readme", action="store_true", help="do not touch README.md (print the section)")
    args = ap.parse_args(argv)
    # diffusers warns on every scheduler built with algorithm_type="dpmsolver", the released LML code's baseline
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out_dir = args.out or Path("runs") / ("lml_verdict_quick" if args.quick else "lml_verdict")
    seeds = (0, 1) if args.quick else (TUNE_SEED,) + REPORT_SEEDS
    if not args.report_only:
        for name in args.benchmarks.split(","):
            name = name.strip()
            if name not in BENCHMARKS:
                raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
            try:
                bench = BENCHMARKS[name](args.quick)
            except (FileNotFoundError, OSError, ValueError) as exc:
                print(f"[{name}] skipped: {exc}", flush=True)
                continue
            run_benchmark(out_dir, bench, bench.seeds or seeds)
    results = collect_all(out_dir)
    if not results:
        raise SystemExit(f"no results under {out_dir}: run the study first")
    plots = write_plots(results, out_dir)
    if args.quick or args.no_readme:
        print(markdown(results, args.quick, plots["verdict"].as_posix()))
        return
    links = {key: publish_image(path, path.name) for key, path in plots.items()}
    md = markdown(results, args.quick, links["verdict"])
    update_readme_section("verdict", md)
    print(md)


if __name__ == "__main__":
    main()
