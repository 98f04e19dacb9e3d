"""The DDS benchmark's selection rules, prior choice and command line (benchmarks/dds_benchmark.py); the cells
themselves are the library's methods, tested elsewhere."""

import pytest

from benchmarks import dds_benchmark as bench


def _rec(psnr):
    return {"psnr": [psnr]}


def test_dds_ties_go_to_the_fewest_cg_iterations():
    recs = [({"cg_iters": 20}, _rec(30.00)), ({"cg_iters": 5}, _rec(30.00 - bench.TIE_DB / 2)),
            ({"cg_iters": 10}, _rec(29.00))]
    assert bench._best_dds(recs)[0] == {"cg_iters": 5}
    # Outside the tie margin the better PSNR wins whatever it costs.
    recs[1] = ({"cg_iters": 5}, _rec(30.00 - 2 * bench.TIE_DB))
    assert bench._best_dds(recs)[0] == {"cg_iters": 20}
    assert bench._best(recs)[0] == {"cg_iters": 20}


def test_grid_edges_are_marked():
    assert bench._edge(1.0, (1.0, 3.0, 10.0)) == "1 (edge)"
    assert bench._edge(3.0, (1.0, 3.0, 10.0)) == "3"
    assert bench._edge(3.0, (3.0,)) == "3"  # a one-point grid has no edge to report


def test_merged_seed_cells_concatenate_per_image_metrics():
    cells = [{"psnr": [1.0, 2.0], "ssim": [0.1, 0.2], "x": 0}, {"psnr": [3.0, 4.0], "ssim": [0.3, 0.4], "x": 1}]
    m = bench._merged(cells)
    assert m["psnr"] == [1.0, 2.0, 3.0, 4.0] and m["ssim"] == [0.1, 0.2, 0.3, 0.4] and m["seeds_run"] == 2
    assert bench._merged([]) is None
    assert bench._fmt_seeds(m, 3).endswith("(2 seeds)") and "seeds" not in bench._fmt_seeds(m, 2)


@pytest.mark.parametrize("bundled", [["digits", "phantoms"], ["digits", "phantoms", "phantoms-complex"]])
def test_mri_rows_use_the_complex_prior_when_it_is_bundled(monkeypatch, tmp_path, bundled):
    monkeypatch.setattr(bench, "_available_pipelines", lambda: bundled)
    r = bench.Runner(tmp_path, bench.Plan())
    complex_ = "phantoms-complex" in bundled
    for row, spec in bench.ROWS.items():
        expected = "phantoms-complex" if complex_ and spec.task["task"] == "mri" else "phantoms"
        assert r.prior_name(row) == expected, row
    # The complex prior reconstructs complex phantoms; everything else real ones.
    task = r.task("mri1-x4", "valid", 1)
    assert task.complex_image is complex_ and task.x.is_complex() is complex_


def test_full_mode_rows_exist_and_mix_noiseless_and_noisy_data():
    assert set(bench.FULL_ROWS) <= set(bench.ROWS) and set(bench.ABLATION_ROWS) <= set(bench.FULL_ROWS)
    assert {bench._noisy(row) for row in bench.FULL_ROWS} == {False, True}
    assert bench.Plan().rows == bench.FULL_ROWS and bench.Plan().seeds >= 3


@pytest.mark.parametrize("argv, message", [(["--rows", "ct8,nope"], "unknown rows"),
                                           (["--parts", "small,huge"], "unknown rows"),
                                           (["--out", "FILE"], "not a folder")])
def test_cli_user_errors_exit_2_before_any_work(tmp_path, capsys, argv, message):
    f = tmp_path / "file"
    f.write_text("x")
    argv = [str(f) if a == "FILE" else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
