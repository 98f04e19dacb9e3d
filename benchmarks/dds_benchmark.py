"""DDS benchmark: rows where the prior matters, every method tuned on validation phantoms, ≥ 3 seeds; and the
exact-Gaussian check of noise-aware data consistency.

Two README sections come out of it:

* ``dds-exact``: the mean of 256 DDS samples against the closed-form posterior mean on stationary Gaussian priors
  (16×16 blur, sparse-view CT, multi-coil MRI; σ ∈ {0.01, 0.03, 0.05}; 20 and 50 steps), constant γ vs noise-aware
  (:mod:`benchmarks.dds_exact`).
* ``dds``: per row, the prior-free truncated pseudo-inverse and the fraction of singular values below 1e-3·s_max,
  then DDS, DPS and the classical baselines. A row is kept only if tuned DDS at 50 NFE beats the best prior-free
  least-squares estimate (pseudo-inverse or tuned early-stopped CG-LS) by ≥ 3 dB on the validation phantoms; the
  other rows are listed with their numbers.

Protocol. Knobs are tuned on validation phantoms (seeds disjoint from test and training): DDS over x̂0 clipping,
M ∈ {5, 10, 20}, η (DDNM form) ∈ {0.85, 1} and, on noisy rows, the prior variance of the noise-aware weight and the
constant γ of the official form; DPS over ζ at each NFE; CG-LS over its iterations, TV over λ. Test cells run 20
phantoms × 3 sampler seeds in one batch of 60 (the seeds are independent sample streams for the same measurement)
and report mean ± std over the 60 reconstructions. DPS at 1000 NFE runs on the first 2 test phantoms × 3 seeds
(seed by seed), each seed paired with a DDS 50 cell on the same phantoms and stream for the targets.

Cost. The full mode (the three rows of :data:`FULL_ROWS`, the exact table) is sized for about 30 minutes on one CPU
core, two thirds of it DPS; MRI rows use the 2-channel ``phantoms-complex`` prior on complex images when it is
bundled and the ``phantoms`` prior on real images otherwise (the table names the prior of each row). ``--rows``
adds the other candidate rows of :data:`ROWS`.

Resumable: every cell is a folder of the result store (:class:`lml_sampler._io.CellStore`) under
``OUT/cells/<weights>/`` where ``<weights>`` is a hash of the prior's weights (``prior-free`` and ``exact`` for cells
that use none), so new weights start new cells and never mix with old ones. ``--parts`` splits the work so that two
processes can share it (``small``: tuning and every test cell except DPS at the large NFE; ``big``: DPS at the large
NFE, its tuning and the DDS timing twins; ``exact``: the Gaussian table). ``--stage report`` rebuilds the README
sections from stored cells only. Run from the repository root:

    python -m benchmarks.dds_benchmark --out runs/dds_benchmark            # everything
    python -m benchmarks.dds_benchmark --out runs/dds_quick --quick        # smoke grid, README untouched
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lml_sampler._io import CellStore, atomic_write, atomic_write_json, check_output_folder
from lml_sampler.pipelines.baselines import singular_values
from lml_sampler.pipelines.reconstruct import load_prior
from lml_sampler.pipelines.tasks import DDS_DEFAULTS, Task, dds_defaults_key, evaluate, make_task, run_method

from . import dds_exact
from .readme import update_readme_section

# ---------------------------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    task: dict
    #: MRI rows: reconstruct complex images with the 2-channel ``phantoms-complex`` prior when it is bundled.
    complex_capable: bool = False


#: Candidate rows, in the order they are run (fastMRI-like ACS: 8 % of the columns at ×4, 4 % at ×8). Rows that
#: look alike were left out to keep the DPS-1000 cells within a few CPU hours: 6 views with 24 detector bins,
#: 1-coil ×8, deblur at σ = 0.01.
ROWS = {
    "mri4-x4-n05": Row("MRI 4 coils ×4, σ=0.05", dict(task="mri", acc=4, coils=4, center_fraction=0.08, sigma=0.05),
                       True),
    "ct8": Row("CT 8 views", dict(task="ct-sparse", views=8)),
    "mri1-x4": Row("MRI 1 coil ×4", dict(task="mri", acc=4, coils=1, center_fraction=0.08), True),
    "ct-la90-n01": Row("CT limited angle 0–90°, σ=0.01", dict(task="ct-limited", views=90, max_angle=90.0, sigma=0.01)),
    "deblur-n05": Row("deblur (Gaussian 9×9, σ_k=2), σ=0.05", dict(task="deblur", sigma=0.05)),
    "box": Row("box inpainting (35 % square)", dict(task="inpaint", mask="box")),
    "mri4-x8-n01": Row("MRI 4 coils ×8, σ=0.01", dict(task="mri", acc=8, coils=4, center_fraction=0.04, sigma=0.01),
                       True),
}
#: The rows of the full mode: one CT and two MRI rows, noiseless and noisy, sized so that the full benchmark runs in
#: about 30 minutes on one CPU core (DPS at 1000 NFE dominates). The other candidates run with ``--rows``.
FULL_ROWS = ("ct8", "mri1-x4", "mri4-x4-n05")
ABLATION_ROWS = ("ct8",)
#: CG iterations of the ablation (DDS 50, tuned settings otherwise, one seed).
CG_ABLATION = (1, 5, 10, 20)
KEEP_MARGIN_DB = 3.0
RCOND = 1e-3


@dataclass
class Plan:
    """What one invocation computes."""

    rows: tuple[str, ...] = FULL_ROWS
    n: int = 20
    n_valid: int = 4
    seeds: int = 3
    nfes: tuple[int, ...] = (50,)
    big_nfe: int = 1000
    #: DPS at ``big_nfe`` runs on the first ``big_n`` test phantoms × ``seeds`` (one back-propagation per step makes
    #: it ~80× the cost of DDS 50); DDS 50 is compared with it on the same phantoms and seeds.
    big_n: int = 2
    # η ∈ {0, 0.5} were tried on MRI 4 coils ×4 σ=0.05 and CT 8 views with the shipped phantoms prior and lost there by
    # 0.4–2.7 dB at every (clip, M); likewise DPS ζ = 1 at 50 NFE (below 17 dB on both).
    dds_grid: dict = field(default_factory=lambda: dict(clip=(False, True), cg_iters=(5, 10, 20), eta=(0.85, 1.0)))
    prior_variances: tuple[float, ...] = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
    gamma_factors: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)  # constant γ = factor/σ² (official form)
    dps_zetas: tuple[float, ...] = (3.0, 10.0, 30.0)
    big_zetas: tuple[float, ...] = (1.0, 3.0, 10.0)
    n_valid_big: int = 1
    cgls_iters: tuple[int, ...] = (3, 5, 10, 20, 50, 100)
    #: Truncation of the pseudo-inverse (singular values below rcond·s_max dropped): 1e-3 is the prior-free
    #: least-squares solution; larger values regularise noisy data (truncated SVD).
    pinv_rconds: tuple[float, ...] = (1e-3, 1e-2, 3e-2, 0.1, 0.3)
    tv_lambdas: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    # 16×16: the instrument measures the sampler, not the image size, and 4-coil MRI at 32×32 alone would take
    # ~15 CPU minutes at 256 samples.
    exact_size: int = 16
    exact_samples: int = 256
    exact_steps: tuple[int, ...] = (20, 50)
    exact_ablation_steps: tuple[int, ...] = (20,)
    exact_tasks: tuple[str, ...] = dds_exact.TASKS
    exact_sigmas: tuple[float, ...] = (0.01, 0.03, 0.05)


def quick_plan() -> Plan:
    return Plan(rows=("ct8", "mri4-x4-n05"), n=4, n_valid=2, seeds=2, nfes=(50,), big_nfe=100, big_n=2,
                dds_grid=dict(clip=(True,), cg_iters=(5,), eta=(0.85,)), prior_variances=(0.25,),
                gamma_factors=(1.0,), dps_zetas=(3.0,), big_zetas=(3.0,), n_valid_big=1, cgls_iters=(5, 20), pinv_rconds=(1e-3, 0.1),
                tv_lambdas=(1e-2,), exact_size=16, exact_samples=64, exact_steps=(10,), exact_ablation_steps=(10,),
                exact_tasks=("blur",), exact_sigmas=(0.05,))


# ---------------------------------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------------------------------


def weights_hash(module: torch.nn.Module) -> str:
    """12 hex digits of SHA-256 over the module's state dict (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


def _mean(v) -> float:
    return float(sum(v) / len(v))


def _std(v) -> float:
    if len(v) < 2:
        return 0.0
    m = _mean(v)
    return math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1))


def _tag(knobs: dict) -> str:
    return "_".join(f"{k}{v:.4g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(knobs.items())) or "default"


def _repeat_task(task: Task, k: int) -> Task:
    """The task with every measurement repeated ``k`` times (seed-major): ``k`` independent samples per phantom."""
    if k == 1:
        return task
    return replace(task, x=torch.cat([task.x] * k), y=torch.cat([task.y] * k))


class Runner:
    def __init__(self, out: Path, plan: Plan):
        self.out, self.plan = out, plan
        self.priors: dict = {}
        self._tasks: dict = {}
        self.complex_prior = "phantoms-complex" in _available_pipelines()

    # -- priors -----------------------------------------------------------------------------------------------------
    def prior_name(self, row: str) -> str:
        return "phantoms-complex" if ROWS[row].complex_capable and self.complex_prior else "phantoms"

    def prior(self, row: str):
        name = self.prior_name(row)
        if name not in self.priors:
            p = load_prior(name)
            self.priors[name] = (p, weights_hash(p.unet))
        return self.priors[name]

    def store(self, row: str | None) -> CellStore:
        """Cells of a row's prior (``row=None``: the prior-free cells)."""
        key = "prior-free" if row is None else f"{self.prior_name(row)}-{self.prior(row)[1]}"
        return CellStore(self.out / "cells" / key)

    # -- tasks ------------------------------------------------------------------------------------------------------
    def task(self, row: str, split: str, n: int) -> Task:
        key = (row, split, n, self.prior_name(row))
        if key not in self._tasks:
            complex_image = self.prior_name(row) == "phantoms-complex"
            self._tasks[key] = make_task(n=n, size=32, split=split, complex_image=complex_image, **ROWS[row].task)
        return self._tasks[key]

    def cell(self, row: str, name: str, method: str, nfe: int = 0, split: str = "test", n: int | None = None,
             seeds: int = 1, stream: int = 0, **knobs) -> dict:
        """The record of cell ``name`` (``method`` on ``row``), computed unless already stored.

        ``seeds`` independent samples per phantom in one batch; ``stream`` selects the sampler's random stream (one
        seed of a method run seed by seed).
        """
        n = n or (self.plan.n if split == "test" else self.plan.n_valid)
        prior_free = method in ("pinv", "cgls", "tv", "fbp", "zerofill")
        store = self.store(None if prior_free else row)
        manifest = {"row": row, "task": ROWS[row].task, "method": method, "nfe": nfe, "split": split, "n": n,
                    "seeds": seeds, "knobs": knobs, "prior": None if prior_free else self.prior_name(row),
                    "complex_image": self.task(row, split, n).complex_image}
        if stream:
            manifest["stream"] = stream

        def compute() -> dict:
            task = _repeat_task(self.task(row, split, n), seeds)
            prior = None if prior_free else self.prior(row)[0]
            g = torch.Generator().manual_seed(1000 + 7919 * stream)
            cpu = time.process_time()
            x, stats = run_method(method, task, prior, nfe=nfe, generator=g, **knobs)
            # CPU seconds of this (single-threaded) process: the one-core cost, unlike wall time independent of
            # the other jobs on the machine.
            stats["cpu_seconds"] = time.process_time() - cpu
            rec = {"name": name, "row": row, "method": method, "nfe": nfe, "split": split, "n": n, "seeds": seeds,
                   "knobs": knobs, "stats": stats, **evaluate(task, x),
                   "seconds_per_image": stats["seconds"] / task.x.shape[0], "threads": torch.get_num_threads(),
                   "finished": time.time()}
            print(f"[{time.strftime('%H:%M:%S')}] {row:12s} {name:44s} PSNR {_mean(rec['psnr']):6.2f}  "
                  f"{rec['seconds_per_image']:.3f} s/img", flush=True)
            return rec

        return store.ensure(f"{row}/{name}", manifest, compute)

    def sv_cell(self, row: str) -> dict:
        """Singular-value statistics of the row's operator (on the operator's own domain)."""
        task = self.task(row, "test", self.plan.n)

        def compute() -> dict:
            s = singular_values(task.operator)
            return {"row": row, "dim": int(s.numel()), "s_max": float(s[0]),
                    "frac_small": float((s < RCOND * s[0]).double().mean()), "rcond": RCOND}

        return self.store(None).ensure(f"{row}/singular_values", {"row": row, "task": ROWS[row].task,
                                                                  "complex_image": task.complex_image}, compute)


def _available_pipelines() -> list[str]:
    from lml_sampler.models.bundled import available_models

    return available_models()["pipelines"]


# ---------------------------------------------------------------------------------------------------------------------
# tuning (validation phantoms)
# ---------------------------------------------------------------------------------------------------------------------


def _noisy(row: str) -> bool:
    return ROWS[row].task.get("sigma", 0) > 0


#: DDS settings within this many dB of the best validation PSNR count as tied; the one with the fewest CG
#: iterations wins (the CG share of a step grows with M, and 0.05 dB is below what 4 phantoms resolve).
TIE_DB = 0.05


def _score(record: dict) -> float:
    """Mean PSNR, a diverged setting (non-finite PSNR) counting as the worst."""
    v = _mean(record["psnr"])
    return v if math.isfinite(v) else -math.inf


def _best(records: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The (knobs, record) with the highest mean PSNR (first of equals; diverged settings last)."""
    return max(records, key=lambda kr: _score(kr[1]))


def _best_dds(records: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The best DDS setting, ties (within :data:`TIE_DB`) going to the fewest CG iterations, then to x̂0 clipping on
    (it bounds an early, large Tweedie x̂0 before data consistency at no cost), then to the first of equals."""
    top = _score(_best(records)[1])
    tied = [kr for kr in records if _score(kr[1]) >= top - TIE_DB]
    return min(tied, key=lambda kr: (kr[0].get("cg_iters", 5), not kr[0].get("clip", False)))


def dds_grid(plan: Plan) -> list[dict]:
    """The (clip, M, η) settings DDS is tuned over (with the default data consistency of the row)."""
    grid = plan.dds_grid
    return [dict(clip=c, cg_iters=m, eta=e) for c in grid["clip"] for m in grid["cg_iters"] for e in grid["eta"]]


def official_knobs(sigma: float, gamma_factor: float | None = None) -> dict:
    """The official DDS settings: M = 5, η = 0.85 (DDNM form), no clipping; constant γ on noisy data."""
    knobs = dict(clip=False, cg_iters=5, eta=0.85)
    if sigma > 0:
        knobs["gamma"] = gamma_factor / sigma**2
    return knobs


def tune_row(r: Runner, row: str) -> dict:
    """Tuned knobs of every method on one row, from validation cells (computed unless stored)."""
    plan = r.plan
    sigma = ROWS[row].task.get("sigma", 0.0)
    out: dict = {}

    def valid(method, knobs, nfe=0, n=None, prefix=None):
        name = f"tune__{prefix or method}__nfe{nfe}__{_tag(knobs)}"
        return knobs, r.cell(row, name, method, nfe, split="valid", n=n, **knobs)

    out["pinv"] = _best([valid("pinv", {"rcond": c}) for c in plan.pinv_rconds])[0]
    out["cgls"] = _best([valid("cgls", {"cgls_iters": k}) for k in plan.cgls_iters])[0]
    out["tv"] = _best([valid("tv", {"tv_lambda": v}) for v in plan.tv_lambdas])[0]
    # DDS: (clip, M, η) with the default data consistency (noise-aware at prior variance 0.25 on noisy rows), then
    # the DC knob at the best of those: the prior variance of the noise-aware weight, or a constant γ instead.
    base_knobs, _ = _best_dds([valid("dds", k, 50) for k in dds_grid(plan)])
    if sigma > 0:
        dc = [valid("dds", {**base_knobs, "prior_variance": v}, 50) for v in plan.prior_variances if v != 0.25]
        dc += [valid("dds", {**base_knobs, "gamma": f / sigma**2}, 50) for f in plan.gamma_factors]
        dc.append(valid("dds", base_knobs, 50))
        out["dds-noise-aware"] = _best_dds([kr for kr in dc if "gamma" not in kr[0]])[0]
        base_knobs = _best_dds(dc)[0]
    out["dds"] = base_knobs
    # The official settings (the "before" column); on noisy rows with γ tuned.
    if sigma > 0:
        out["dds-official"] = _best([valid("dds", official_knobs(sigma, f), 50) for f in plan.gamma_factors])[0]
    else:
        out["dds-official"] = official_knobs(0.0)
    out["dps"] = _best([valid("dps", {"zeta": z}, 50) for z in plan.dps_zetas])[0]
    return out


def tune_big(r: Runner, row: str) -> dict:
    """DPS ζ at the large NFE, on ``n_valid_big`` validation phantoms (each cell back-propagates big_nfe times)."""
    plan = r.plan
    recs = [({"zeta": z}, r.cell(row, f"tune__dps__nfe{plan.big_nfe}__zeta{z:.4g}", "dps", plan.big_nfe,
                                 split="valid", n=plan.n_valid_big, zeta=z)) for z in plan.big_zetas]
    return _best(recs)[0]


def keep_row(r: Runner, row: str, tuned: dict) -> tuple[bool, dict]:
    """Validation screen: tuned DDS 50 vs the best prior-free least-squares estimate (pinv or tuned CG-LS)."""
    dds = r.cell(row, f"tune__dds__nfe50__{_tag(tuned['dds'])}", "dds", 50, split="valid", **tuned["dds"])
    pinv = r.cell(row, f"tune__pinv__nfe0__{_tag(tuned['pinv'])}", "pinv", split="valid", **tuned["pinv"])
    cgls = r.cell(row, f"tune__cgls__nfe0__{_tag(tuned['cgls'])}", "cgls", split="valid", **tuned["cgls"])
    ref = max(_mean(pinv["psnr"]), _mean(cgls["psnr"]))
    gap = _mean(dds["psnr"]) - ref
    return gap >= KEEP_MARGIN_DB, {"dds": _mean(dds["psnr"]), "pinv": _mean(pinv["psnr"]),
                                    "cgls": _mean(cgls["psnr"]), "gap": gap}


# ---------------------------------------------------------------------------------------------------------------------
# test cells
# ---------------------------------------------------------------------------------------------------------------------


def test_name(method: str, nfe: int, knobs: dict, suffix: str = "") -> str:
    """Test cell names carry their knobs, so a re-tuned setting starts a new cell instead of clashing."""
    return f"{method}__nfe{nfe}__{_tag(knobs)}{suffix}"


def run_small(r: Runner, row: str, tuned: dict) -> None:
    plan, k = r.plan, r.plan.seeds
    fam = "fbp" if ROWS[row].task["task"].startswith("ct") else "zerofill"
    r.sv_cell(row)
    r.cell(row, test_name("pinv", 0, tuned["pinv"]), "pinv", **tuned["pinv"])
    r.cell(row, fam, fam)
    r.cell(row, test_name("cgls", 0, tuned["cgls"]), "cgls", **tuned["cgls"])
    r.cell(row, test_name("tv", 0, tuned["tv"]), "tv", **tuned["tv"])
    for nfe in plan.nfes:
        r.cell(row, test_name("dds", nfe, tuned["dds"]), "dds", nfe, seeds=k, **tuned["dds"])
    r.cell(row, test_name("dds", 50, tuned["dds-official"]), "dds", 50, seeds=k, **tuned["dds-official"])
    r.cell(row, test_name("dps", 50, tuned["dps"]), "dps", 50, seeds=k, **tuned["dps"])
    hard = {"eta": tuned["dds"]["eta"], "clip": tuned["dds"]["clip"]}
    if not _noisy(row):
        r.cell(row, test_name("ddnm", 50, hard), "ddnm", 50, seeds=k, **hard)
    if row in ABLATION_ROWS:
        for m in CG_ABLATION:
            knobs = {**tuned["dds"], "cg_iters": m}
            r.cell(row, test_name("dds", 50, knobs, "__ablation"), "dds", 50, **knobs)


def run_big(r: Runner, row: str, tuned: dict, zeta: dict, seed: int) -> None:
    """DPS at the large NFE on the first ``big_n`` test phantoms, one seed (random stream) per cell so that a run
    short of CPU time covers every row with seed 0 before adding seeds 1, 2, …; each is followed by DDS 50 on the same
    phantoms and stream, timed on the same machine load (the PSNR gain and the wall-time ratio pair the two)."""
    big, n = r.plan.big_nfe, r.plan.big_n
    r.cell(row, test_name("dps", big, zeta, f"__n{n}_seed{seed}"), "dps", big, n=n, stream=seed, **zeta)
    r.cell(row, test_name("dds", 50, tuned["dds"], f"__n{n}_seed{seed}"), "dds", 50, n=n, stream=seed, **tuned["dds"])


def big_seed_cells(r: Runner, row: str, method: str, knobs: dict) -> list[dict]:
    """The stored per-seed cells of the large-NFE comparison (``method`` "dps" or "dds"), seed 0 first."""
    nfe, n = (r.plan.big_nfe if method == "dps" else 50), r.plan.big_n
    cells = [r.store(row).cell(f"{row}/{test_name(method, nfe, knobs, f'__n{n}_seed{s}')}").result()
             for s in range(r.plan.seeds)]
    return [c for c in cells if c is not None]


def _merged(cells: list[dict]) -> dict | None:
    """One record of several seed cells: their per-image metrics concatenated."""
    if not cells:
        return None
    return {**cells[0], "psnr": [v for c in cells for v in c["psnr"]], "ssim": [v for c in cells for v in c["ssim"]],
            "seeds_run": len(cells)}


# ---------------------------------------------------------------------------------------------------------------------
# exact-Gaussian cells
# ---------------------------------------------------------------------------------------------------------------------

#: The table's columns; the target is checked on the last (the noise-aware rule with its CG subproblem solved to
#: about 1e-3: multi-coil MRI at σ = 0.01 has γ_t up to 5000, and 20 iterations leave its proximal step unconverged).
EXACT_MAIN = ("constant", "noise-aware", "noise-aware-m50")
EXACT_ABLATION = ("constant-m20", "noise-aware-m5", "gamma-t-official-direction", "discrepancy")


def run_exact(out: Path, plan: Plan) -> None:
    store = CellStore(out / "cells" / "exact")
    for task in plan.exact_tasks:
        for sigma in plan.exact_sigmas:
            problem = None
            for steps in plan.exact_steps:
                ablation = task == "blur" and steps in plan.exact_ablation_steps
                variants = EXACT_MAIN + (EXACT_ABLATION if ablation else ())
                for v in variants:
                    manifest = {"task": task, "sigma": sigma, "steps": steps, "variant": v,
                                "settings": dds_exact.VARIANTS[v][1], "size": plan.exact_size,
                                "samples": plan.exact_samples}

                    def compute(v=v, steps=steps):
                        nonlocal problem
                        if problem is None:
                            problem = dds_exact.gaussian_problem(task, sigma, size=plan.exact_size)
                        t0 = time.perf_counter()
                        rec = dds_exact.dds_sample_mean(problem, v, steps, samples=plan.exact_samples)
                        rec.update(manifest, seconds=time.perf_counter() - t0)
                        print(f"[{time.strftime('%H:%M:%S')}] exact {task} σ={sigma} {steps} steps {v:28s} "
                              f"error {rec['error']:.3f} ± {rec['mc_se']:.3f}", flush=True)
                        return rec

                    store.ensure(f"{task}/sigma{sigma:g}_steps{steps}_{v}_n{plan.exact_size}", manifest, compute)


def report_exact(out: Path, plan: Plan) -> str:
    recs = CellStore(out / "cells" / "exact").results()
    cells = {(c["task"], c["sigma"], c["steps"], c["variant"]): c for c in recs if c["size"] == plan.exact_size
             and c["samples"] == plan.exact_samples}
    label = {"blur": "motion blur", "ct": "CT 8 views", "mri": "MRI 4 coils ×4 (complex)"}
    lines = [
        f"Exact-score instrument: stationary Gaussian prior N(0, Σ) on {plan.exact_size}×{plan.exact_size} images "
        "(1/|f|² spectrum, 0.25 variance per pixel; `GaussianDenoiser.stationary`), one measurement of one prior "
        "sample, and its closed-form posterior mean μ = ΣAᴴ(AΣAᴴ + σ²I)⁻¹y. Entry: ‖mean of "
        f"{plan.exact_samples} DDS samples − μ‖ / ‖μ‖ (± the Monte-Carlo standard error √(Σ Var/K)/‖μ‖, the part more "
        "samples would remove). DDS: DDNM-form η = 0.85, no clipping. **Constant γ** = the official proximal step "
        "with γ = 1/σ², M = 5; **noise-aware** = `noise_std=σ` (γ_t = r_t²/σ², 2r_t²/σ² on complex MRI data, r_t² the posterior variance of x0 "
        "given x_t under an isotropic prior of the true per-pixel variance 0.25, and the noise direction re-derived "
        "from the corrected x̂0'; docs/dds.md §4) with M = 20 and M = 50 CG iterations (M = 50 solves the proximal "
        "problem to about 1e-3 also where γ_t reaches 5000, multi-coil MRI at σ = 0.01). Target: noise-aware ≤ 0.10 "
        "in every cell, checked at M = 50. Produced by `python -m benchmarks.dds_benchmark --parts exact`.",
        "",
        "| problem | σ | steps | constant γ | noise-aware, M = 20 | noise-aware, M = 50 | target ≤ 0.10 |",
        "|---|---|---|---|---|---|---|",
    ]
    met_all, n_met, n_cells, n20 = True, 0, 0, 0
    for task in plan.exact_tasks:
        for sigma in plan.exact_sigmas:
            for steps in plan.exact_steps:
                found = [cells.get((task, sigma, steps, v)) for v in EXACT_MAIN]
                text = [f"{x['error']:.3f} ± {x['mc_se']:.3f}" if x else "not run" for x in found]
                if found[-1] is None:
                    met_all = False
                    lines.append(f"| {label[task]} | {sigma:g} | {steps} | " + " | ".join(text) + " | not run |")
                    continue
                ok = found[-1]["error"] <= 0.10
                met_all &= ok
                n_met, n_cells = n_met + ok, n_cells + 1
                n20 += found[1] is not None and found[1]["error"] <= 0.10
                lines.append(f"| {label[task]} | {sigma:g} | {steps} | " + " | ".join(text)
                             + f" | {'met' if ok else 'not met'} |")
    lines += ["", f"Noise-aware error ≤ 0.10 in every cell (M = 50): {'met' if met_all else '**not met**'} ({n_met} of "
                  f"{n_cells} measured cells within the target; {n20} of them at M = 20).", ""]
    abl = [v for v in EXACT_MAIN[:2] + EXACT_ABLATION if any(k[0] == "blur" and k[3] == v for k in cells)]
    if any(v in EXACT_ABLATION for v in abl):
        lines += ["**Variants on motion blur** (same instrument; the choice of the noise-aware rule): error of the "
                  "sample mean, mean CG iterations per step in brackets.", "",
                  "| σ | steps | " + " | ".join(dds_exact.VARIANTS[v][0] for v in abl) + " |",
                  "|---|---|" + "---|" * len(abl)]
        for sigma in plan.exact_sigmas:
            for steps in plan.exact_ablation_steps:
                row = [f"{cells[k]['error']:.3f} ({cells[k]['cg_iters_per_step']:.0f})"
                       if (k := ("blur", sigma, steps, v)) in cells else "–" for v in abl]
                lines.append(f"| {sigma:g} | {steps} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------


def _cg_share(records: list[dict]) -> float:
    """Percent of the summed DDS wall time that data consistency (CG with its operator calls) took."""
    return 100 * sum(r["stats"]["cg_seconds"] for r in records) / sum(r["stats"]["seconds"] for r in records)


def _fmt(rec, key="psnr", digits=2) -> str:
    """Mean ± std; samples that diverged (non-finite) are counted and left out of both, never hidden."""
    if rec is None:
        return "–"
    finite = [v for v in rec[key] if math.isfinite(v)]
    bad = len(rec[key]) - len(finite)
    if not finite:
        return f"diverged ({bad} of {bad})"
    text = f"{_mean(finite):.{digits}f} ± {_std(finite):.{digits}f}"
    return text + (f" (**{bad} of {len(rec[key])} diverged**)" if bad else "")


def _braces(values) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _fmt_seeds(rec, seeds: int) -> str:
    """A merged seed record, marked when fewer seeds than planned were run."""
    if rec is None:
        return "not run"
    text = _fmt(rec)
    return text if rec["seeds_run"] >= seeds else f"{text} ({rec['seeds_run']} seed{'s' if rec['seeds_run'] > 1 else ''})"


def _edge(value, grid) -> str:
    """A tuned value, marked when it lies on the edge of a grid of more than one value."""
    return f"{value:g}" + (" (edge)" if len(grid) > 1 and value in (min(grid), max(grid)) else "")


def _knobs_text(k: dict, sigma: float) -> str:
    parts = [f"clip {'on' if k.get('clip') else 'off'}", f"M={k.get('cg_iters', 5)}", f"η={k.get('eta', 0.85):g}"]
    if sigma > 0:
        if "gamma" in k:
            parts.append(f"constant γ={k['gamma'] * sigma**2:g}/σ²")
        else:
            parts.append(f"noise-aware v={k.get('prior_variance', 0.25):g}")
    else:
        parts.append("hard DC")
    return ", ".join(parts)


def report(r: Runner, tuned: dict, screens: dict, zetas: dict) -> str:
    plan = r.plan
    kept = [row for row in plan.rows if screens.get(row, (False,))[0]]
    dropped = [row for row in plan.rows if row in screens and not screens[row][0]]

    def c(row, name, prior_free=False):
        store = r.store(None if prior_free else row)
        return store.cell(f"{row}/{name}").result()

    names = sorted({r.prior_name(row) for row in plan.rows})
    prior_text = []
    for name in names:
        row = next(x for x in plan.rows if r.prior_name(x) == name)
        info = _training_info(name)
        prior_text.append(f"`{name}` (weights {r.prior(row)[1]}, {info.get('steps', '?')} training steps)")
    mri_prior = ("complex images with the 2-channel `phantoms-complex` prior" if r.complex_prior else
                 "real (magnitude) phantoms with the 1-channel `phantoms` prior through `RealInput` (no complex prior "
                 "is bundled)")
    k, big, nb = plan.seeds, plan.big_nfe, plan.big_n
    lines = [
        f"32×32 ellipse phantoms in [0, 1] (`lml_sampler.data.phantoms`); priors: {', '.join(prior_text)}; the "
        f"*prior* column names the one each row used. MRI rows: {mri_prior}. **{plan.n} test phantoms × {k} seeds** "
        f"(independent sampler streams for the same measurement, one batch of {plan.n * k}); diffusion columns are "
        f"mean ± std over the {plan.n * k} reconstructions, deterministic baselines over the {plan.n} phantoms. "
        f"**DPS {big}** runs on the first {nb} test phantoms × {k} seeds only ({big} back-propagations per image; "
        "the CPU budget of the benchmark is 30 minutes on one core), and the *targets* below compare it with DDS 50 on "
        "exactly those phantoms and seeds. PSNR (dB, data range 1) of the image (complex: magnitude). All operators "
        "have ‖A‖ = 1 on [0, 1] images; σ is the noise std per measured entry (complex: E|n|² = σ²). Every method is "
        "tuned on validation phantoms (disjoint seeds), settings below. **Prior-free columns:** *pinv* = truncated "
        "pseudo-inverse A⁺y (singular values below rcond·s_max treated as 0, rcond tuned: truncated SVD), *CG-LS* = early-stopped CG least squares (iterations tuned), *% s < 1e-3* = fraction of singular "
        "values of A (on its domain, 32×32 unknowns, complex for the complex prior) below 1e-3·s_max. A row is kept "
        "when tuned DDS 50 beats max(pinv, CG-LS) by ≥ 3 dB on the validation phantoms. *DDS 50 official* = the "
        "released settings (M = 5, η = 0.85 DDNM form, no clipping; noisy rows: constant γ, tuned), the baseline the "
        "tuned settings are measured against. *Hard proj.* = DDS with CG run to convergence on AᴴAx = Aᴴy (DDNM-style range-space "
        "projection, not DDNM itself). Produced by `python -m benchmarks.dds_benchmark`.",
        "",
        "| task | prior | % s < 1e-3 | pinv | CG-LS | TV | FBP / zero-filled | DDS 50 official | "
        + " | ".join(f"DDS {n}" for n in plan.nfes) + f" | DPS 50 | DPS {big} ({nb} phantoms) | hard proj. 50 |",
    ]
    lines.append("|" + "---|" * (len(lines[-1].split("|")) - 2))
    for row in kept:
        sv = r.store(None).cell(f"{row}/singular_values").result()
        fam = "fbp" if ROWS[row].task["task"].startswith("ct") else "zerofill"
        t = tuned[row]
        hard = {"eta": t["dds"]["eta"], "clip": t["dds"]["clip"]}
        cells = [f"`{r.prior_name(row)}`", f"{100 * sv['frac_small']:.1f}" if sv else "–",
                 _fmt(c(row, test_name("pinv", 0, t["pinv"]), True)),
                 _fmt(c(row, test_name("cgls", 0, t["cgls"]), True)),
                 _fmt(c(row, test_name("tv", 0, t["tv"]), True)), _fmt(c(row, fam, True)),
                 _fmt(c(row, test_name("dds", 50, t["dds-official"])))]
        cells += [_fmt(c(row, test_name("dds", n, t["dds"]))) for n in plan.nfes]
        cells += [_fmt(c(row, test_name("dps", 50, t["dps"]))),
                  _fmt_seeds(_merged(big_seed_cells(r, row, "dps", zetas[row])) if row in zetas else None, k),
                  _fmt(c(row, test_name("ddnm", 50, hard))) if not _noisy(row) else "– (noisy)"]
        lines.append(f"| {ROWS[row].label} | " + " | ".join(cells) + " |")
    g = plan.dds_grid
    lines += ["", f"**Chosen settings** on {plan.n_valid} validation phantoms (DDS at 50 NFE, DPS per NFE). Grids: "
              f"DDS x̂0 clipping on/off × M ∈ {_braces(g['cg_iters'])} × DDNM-form η ∈ {_braces(g['eta'])}, then on "
              f"noisy rows the prior variance v ∈ {_braces(plan.prior_variances)} of the noise-aware weight or a "
              f"constant γ ∈ {_braces(plan.gamma_factors)}/σ² at the best (clip, M, η); settings within {TIE_DB} dB "
              "count as tied and the fewest CG iterations, then x̂0 clipping on, wins. "
              f"DPS ζ ∈ {_braces(plan.dps_zetas)} at 50 NFE and "
              f"{_braces(plan.big_zetas)} at {big} NFE (on {plan.n_valid_big} validation phantom"
              f"{'s' if plan.n_valid_big > 1 else ''}); DPS clips x̂0 as the released code does. CG-LS iterations "
              f"{_braces(plan.cgls_iters)}, pinv rcond {_braces(plan.pinv_rconds)}, TV λ {_braces(plan.tv_lambdas)} (300 "
              "PDHG iterations). A choice on the "
              "edge of its grid is marked (edge).", "",
              "| task | DDS (tuned) | DDS official | DPS ζ (50 / " + str(big) + ") | CG-LS iterations | pinv rcond "
              "| TV λ |", "|---|---|---|---|---|---|---|"]
    for row in kept:
        t, sigma = tuned[row], ROWS[row].task.get("sigma", 0.0)
        zb = zetas.get(row, {}).get("zeta")
        lines.append(f"| {ROWS[row].label} | {_knobs_text(t['dds'], sigma)} | {_knobs_text(t['dds-official'], sigma)}"
                     f" | {_edge(t['dps']['zeta'], plan.dps_zetas)} / "
                     f"{'–' if zb is None else _edge(zb, plan.big_zetas)} | "
                     f"{_edge(t['cgls']['cgls_iters'], plan.cgls_iters)} | {_edge(t['pinv']['rcond'], plan.pinv_rconds)}"
                     f" | {_edge(t['tv']['tv_lambda'], plan.tv_lambdas)} |")
    lines += ["", f"**Targets** — DDS 50 ≥ DPS {big} in PSNR with ≥ 15× less wall time, and the CG share of a DDS "
              f"step ≤ 10 %. Both on the first {nb} test phantoms × {k} seeds, one cell per seed (batch of {nb}), "
              f"each DPS cell followed by its DDS twin with the same batch and random stream (1 CPU thread, so both "
              "see the same machine load); the time ratio is the ratio of the summed wall times.", ""]
    shares = []
    for row in kept:
        p = big_seed_cells(r, row, "dps", zetas[row]) if row in zetas else []
        d = big_seed_cells(r, row, "dds", tuned[row]["dds"])[:len(p)]
        if not p or len(d) < len(p):
            lines.append(f"- {ROWS[row].label}: DPS {big} not run: **not met**")
            continue
        pm, dm = _merged(p), _merged(d)
        gain = _mean(dm["psnr"]) - _mean(pm["psnr"])
        p_time, d_time = sum(x["stats"]["seconds"] for x in p), sum(x["stats"]["seconds"] for x in d)
        speed = p_time / max(d_time, 1e-9)
        share = _cg_share(d)
        shares.append(share)
        ok = gain >= 0 and speed >= 15
        seeds_note = "" if len(p) >= k else f" ({len(p)} of {k} seeds)"
        lines.append(f"- {ROWS[row].label}: DDS 50 {_fmt(dm)} vs DPS {big} {_fmt(pm)} dB{seeds_note}: "
                     f"{gain:+.2f} dB, {speed:.0f}× less wall time ({d_time / (nb * len(d)):.3f} vs "
                     f"{p_time / (nb * len(p)):.2f} s/image), CG share {share:.1f} %: **{'met' if ok else 'not met'}**.")
    main = [rec for row in kept if (rec := c(row, test_name("dds", 50, tuned[row]["dds"]))) is not None]
    main_shares = [_cg_share([rec]) for rec in main]
    if shares or main_shares:
        parts = []
        if main_shares:
            n_main = main[0]["n"] * main[0]["seeds"]
            parts.append(f"{min(main_shares):.1f}–{max(main_shares):.1f} % in the main cells (one batch of {n_main}): "
                         f"**{'met' if max(main_shares) <= 10 else 'not met'}**")
        if shares:
            parts.append(f"{min(shares):.1f}–{max(shares):.1f} % in the timing twins (batch of {nb}): "
                         f"**{'met' if max(shares) <= 10 else 'not met'}**")
        lines.append("- CG share of a DDS step at the tuned M (target ≤ 10 %): " + "; ".join(parts)
                     + ". A UNet call's cost grows with the batch; a CG iteration's on these 32×32 images barely "
                     "does (per-operation overhead dominates it), so the share is largest at small batches.")
    abl = [row for row in kept if row in ABLATION_ROWS]
    if abl:
        lines += ["", f"**CG iterations** (DDS 50, tuned settings otherwise, {plan.n} test phantoms × 1 seed): PSNR "
                  "and CG share of the DDS time.", "",
                  "| task | " + " | ".join(f"M={m}" for m in CG_ABLATION) + " |", "|---|" + "---|" * len(CG_ABLATION)]
        for row in abl:
            cells = []
            for m in CG_ABLATION:
                rec = c(row, test_name("dds", 50, {**tuned[row]["dds"], "cg_iters": m}, "__ablation"))
                cells.append("–" if rec is None else
                             f"{_mean(rec['psnr']):.2f} ({_cg_share([rec]):.0f} %)")
            lines.append(f"| {ROWS[row].label} | " + " | ".join(cells) + " |")
    if dropped:
        lines += ["", "**Dropped rows** (tuned DDS 50 less than 3 dB above the best prior-free least squares on the "
                  "validation phantoms: the prior barely matters there):", ""]
        for row in dropped:
            s = screens[row][1]
            lines.append(f"- {ROWS[row].label}: DDS 50 {s['dds']:.2f} dB vs pinv {s['pinv']:.2f}, CG-LS "
                         f"{s['cgls']:.2f} ({s['gap']:+.2f} dB).")
    match = _defaults_match(tuned)
    lines += ["", f"Per-task DDS defaults (`lml_sampler.pipelines.tasks.DDS_DEFAULTS`, used by `DDSPipeline` via "
              f"`dds_defaults` and by `lml-reconstruct`): {match}."]
    return "\n".join(lines)


def _training_info(name: str) -> dict:
    from lml_sampler.models.bundled import bundled_path

    f = bundled_path(name) / "training.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def defaults_from_tuning(r: Runner, tuned: dict, kept: list[str]) -> dict:
    """Per :data:`DDS_DEFAULTS` key: of the settings tuned on the key's kept rows (noisy rows: their best
    noise-aware setting, since a constant γ does not carry over between noise levels), the one with the best mean
    validation PSNR over those rows (computing the few validation cells a row has not run yet)."""
    groups: dict = {}
    for row in kept:
        groups.setdefault(dds_defaults_key(ROWS[row].task["task"], _noisy(row)), []).append(row)
    table = {}
    for key, rows in groups.items():
        candidates = [tuned[row].get("dds-noise-aware", tuned[row]["dds"]) for row in rows]
        scored = []
        for knobs in candidates:
            psnrs = [_mean(r.cell(row, f"tune__dds__nfe50__{_tag(knobs)}", "dds", 50, split="valid", **knobs)["psnr"])
                     for row in rows]
            scored.append((sum(psnrs) / len(psnrs), knobs))
        table[key] = max(scored, key=lambda s: s[0])[1]
    return table


def _defaults_match(tuned_defaults: dict) -> str:
    got = tuned_defaults.get("_defaults", {})
    if not got:
        return "no tuned defaults yet"
    diff = [f"`{k}`: shipped {DDS_DEFAULTS.get(k)} vs tuned {v}" for k, v in sorted(got.items())
            if DDS_DEFAULTS.get(k) != v]
    return "equal to the tuned settings" if not diff else "**differ** from the tuned settings (" + "; ".join(diff) + ")"


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/dds_benchmark")
    p.add_argument("--quick", action="store_true", help="2 rows, 4 phantoms, 2 seeds, tiny grids; README untouched")
    p.add_argument("--rows", default=",".join(FULL_ROWS), help=f"rows to run, from {','.join(ROWS)} (default: the "
                   "three of the full mode)")
    p.add_argument("--parts", default="exact,small,big", help="exact, small (tuning + test cells), big (DPS at the "
                   "large NFE + timing twins); run small and big in two processes to use two cores")
    p.add_argument("--stage", default="all", choices=("all", "report"))
    p.add_argument("--no-readme", action="store_true", help="do not update README.md (--quick never does)")
    args = p.parse_args(argv)
    try:
        out = check_output_folder(args.out)
    except ValueError as e:
        print(f"dds_benchmark: {e}", file=sys.stderr)
        return 2
    rows = tuple(x for x in args.rows.split(",") if x)
    bad = [x for x in rows if x not in ROWS]
    parts = set(args.parts.split(","))
    if bad or not parts <= {"exact", "small", "big"}:
        print(f"dds_benchmark: unknown rows {bad} or parts {sorted(parts)}", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out.mkdir(parents=True, exist_ok=True)
    plan = quick_plan() if args.quick else Plan(rows=rows)
    if args.quick:
        plan = replace(plan, rows=tuple(x for x in plan.rows if x in rows) or plan.rows)
    compute = args.stage != "report"

    if "exact" in parts and compute:
        run_exact(out, plan)
    r = Runner(out, plan)
    tuned, screens, zetas = {}, {}, {}
    if parts & {"small", "big"}:
        stored = _read_json(out / "tuned.json")
        small = "small" in parts and compute
        for row in plan.rows:
            if small:
                tuned[row] = tune_row(r, row)
                screens[row] = keep_row(r, row, tuned[row])
                # Written per row: a big-only process starts on a row as soon as its tuning is here.
                _merge_json(out / "tuned.json", rows=tuned, screens=screens)
            elif compute:
                tuned[row] = _wait_for_tuning(out, row)
                screens[row] = keep_row(r, row, tuned[row])
            elif (known := stored.get("rows", {}).get(row)) is not None:
                tuned[row] = known
                screens[row] = keep_row(r, row, known)
            if compute and "big" in parts and screens.get(row, (False,))[0] and not small:
                zetas[row] = tune_big(r, row)
                _merge_json(out / "tuned_big.json", **{row: zetas[row]})
                run_big(r, row, tuned[row], zetas[row], seed=0)
        kept = [row for row in plan.rows if row in screens and screens[row][0]]
        if compute and "big" in parts and not small:
            for seed in range(1, plan.seeds):
                for row in kept:
                    run_big(r, row, tuned[row], zetas[row], seed)
        if small:
            for row in kept:
                run_small(r, row, tuned[row])
            tuned["_defaults"] = defaults_from_tuning(r, tuned, kept)
            _merge_json(out / "tuned.json", rows=tuned, screens=screens)
            if "big" in parts:  # one process doing both: the large-NFE cells last
                for row in kept:
                    zetas[row] = tune_big(r, row)
                    _merge_json(out / "tuned_big.json", **{row: zetas[row]})
                for seed in range(plan.seeds):
                    for row in kept:
                        run_big(r, row, tuned[row], zetas[row], seed)
        else:
            tuned["_defaults"] = stored.get("rows", {}).get("_defaults", {})
        zetas = _read_json(out / "tuned_big.json")
    sections = {}
    if "exact" in parts:
        sections["dds-exact"] = report_exact(out, plan)
    if parts & {"small", "big"}:
        sections["dds"] = report(r, tuned, screens, zetas)
    for name, md in sections.items():
        atomic_write(out / f"{name}.md", md)
        print(md)
        if not args.no_readme and not args.quick:
            update_readme_section(name, md)
    print(f"dds_benchmark: {time.process_time() / 60:.1f} CPU-minutes in this process", file=sys.stderr)
    return 0


def _wait_for_tuning(out: Path, row: str, poll: float = 60.0) -> dict:
    """Block until ``OUT/tuned.json`` holds the tuning of ``row`` (written by the process running ``small``)."""
    while (known := _read_json(out / "tuned.json").get("rows", {}).get(row)) is None:
        print(f"[{time.strftime('%H:%M:%S')}] {row}: waiting for the small part's tuning", flush=True)
        time.sleep(poll)
    return known


def _merge_json(path: Path, **entries) -> None:
    """Merge ``entries`` (dicts one level deep) into the JSON object at ``path`` as it is on disk now, so that
    processes working on different rows (``--rows``, ``--parts``) keep each other's entries."""
    current = _read_json(path)
    for key, value in entries.items():
        current[key] = {**current.get(key, {}), **value} if isinstance(value, dict) else value
    atomic_write_json(path, current)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    raise SystemExit(main())
