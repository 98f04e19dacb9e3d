"""Does LML help flow-matching models? Run the flow study and regenerate its README section.

    python -m benchmarks.flow_verdict [--quick] [--report-only] [--no-readme] [--out DIR] [--parts LIST]

Only a full run (neither ``--quick`` nor ``--no-readme``) writes into the repository: the README section
``flow-verdict`` and ``docs/images/flow_verdict.png``. Otherwise the plot stays in the run folder and the section
is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

from lml_sampler._io import CellStore, check_output_folder

from .models import BENCHMARKS
from .runner import run_benchmark, run_cfg
from .specs import CFG_NFES, GUIDANCE_SCALES, NFES, QUICK_NFES, REPORT_SEEDS, TUNE_SEED

PARTS = tuple(BENCHMARKS) + ("cfg",)
#: Samples per guidance cell (one report seed set: each guided model call costs ~10× an unguided one).
CFG_N, CFG_N_QUICK = 500, 200


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.flow_verdict", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, NFE 4/8, γ = 0.5 only, seeds 0/1")
    ap.add_argument("--out", type=Path, default=None, help="cell folder (default runs/flow_verdict[_quick])")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--report-only", action="store_true", help="only rebuild the README section and the plot")
    ap.add_argument("--no-readme", action="store_true", help="do not touch README.md (print the section)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"error: unknown part(s) {unknown}; choose from {', '.join(PARTS)}", file=sys.stderr)
        raise SystemExit(2)
    out_dir = args.out or Path("runs") / ("flow_verdict_quick" if args.quick else "flow_verdict")
    try:
        check_output_folder(out_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    store = CellStore(out_dir)
    seeds = (TUNE_SEED, REPORT_SEEDS[0]) if args.quick else (TUNE_SEED,) + tuple(REPORT_SEEDS)
    nfes = QUICK_NFES if args.quick else NFES
    if not args.report_only:
        for name in parts:
            if name == "cfg":
                run_cfg(store, GUIDANCE_SCALES[:2] if args.quick else GUIDANCE_SCALES,
                        (8,) if args.quick else CFG_NFES, seeds[:2], CFG_N_QUICK if args.quick else CFG_N,
                        "quick" if args.quick else "reduced")
            else:
                run_benchmark(store, BENCHMARKS[name](args.quick), nfes, seeds)
    from .report import markdown, plot  # matplotlib only when reporting

    plot_path = plot(store, out_dir / "flow_verdict.png", nfes, args.quick)
    if args.quick or args.no_readme:
        print(markdown(store, nfes, args.quick, plot_path.as_posix()))
        return
    from benchmarks.readme import publish_image, update_readme_section

    from benchmarks.recommended import publish

    from .report import RECOMMENDED_NFES, best_rows, trusted

    md = markdown(store, nfes, args.quick, publish_image(plot_path, plot_path.name))
    update_readme_section("flow-verdict", md)
    publish("flow_verdict", best_rows(store, RECOMMENDED_NFES), trusted=trusted(store, RECOMMENDED_NFES))
    print(md)


if __name__ == "__main__":
    main()
