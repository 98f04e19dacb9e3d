"""Regenerate the README section "sweep" from the main job: the FID/KID-vs-NFE sweep on the bundled models.

    python -m benchmarks.fid_sweep                       # runs (or resumes) lml-eval's default sweep in runs/sweep
    python -m benchmarks.fid_sweep --out runs/sweep      # the same folder the README's main job writes

The sweep is exactly ``lml-eval sweep --out DIR`` with its defaults; this script adds the README section and copies
the plots to ``docs/images/fid_vs_nfe.png`` and ``docs/images/kid_vs_nfe.png``.
"""

from __future__ import annotations

import argparse
import sys

from lml_sampler.eval.report import readme_markdown
from lml_sampler.eval.sweep import SweepConfig, run_sweep

from .readme import publish_image, update_readme_section


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args(argv)
    rows = run_sweep(SweepConfig(out=args.out))
    image = publish_image(f"{args.out}/fid_vs_nfe.png", "fid_vs_nfe.png")
    kid_image = publish_image(f"{args.out}/kid_vs_nfe.png", "kid_vs_nfe.png")
    command = f"python -m benchmarks.fid_sweep --out {args.out}"
    update_readme_section("sweep", readme_markdown(rows, image, command=command, kid_image=kid_image))
    print(f"README section 'sweep' updated; plots at {image}, {kid_image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
