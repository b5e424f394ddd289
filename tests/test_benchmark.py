"""`scripts/benchmark.py --cpu`: the reduced mode runs the real iteration and the data path and reports them."""
import importlib.util
import json
import os

BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "scripts", "benchmark.py")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_count_matches_the_reference_formula():
    benchmark = load_benchmark()
    # as benchmarks/torch_baseline.py counts it: batch * (FWD_G + 3*FWD_D + 3*FWD_D + 3*FWD_G + 3*FWD_D)
    expected = 32 * (4 * benchmark.FORWARD_GENERATOR + 9 * benchmark.FORWARD_DISCRIMINATOR)
    assert benchmark.flops_per_iteration(32) == expected
    assert 2.5e12 < expected < 4e12, "about 3.2 TFLOP per iteration at batch 32"


def test_cpu_mode_times_the_step_and_the_data_path(tmp_path, volumetric_dir):
    benchmark = load_benchmark()
    output = tmp_path / "bench.jsonl"
    # A baseline as benchmarks/torch_baseline.py writes it, with a line of other output and a slower second row.
    baseline = tmp_path / "baseline.jsonl"
    baseline.write_text('starting\n{"recipe": "stable", "samples_per_s": 4.0}\n{"recipe": "stable", "samples_per_s": 2.0}\n')
    argv = ["--cpu", "--data-dir", volumetric_dir, "--category", "chair", "--json", str(output), "--baseline", str(baseline)]
    assert benchmark.main(argv) == 0
    step, data_path = [json.loads(line) for line in output.read_text().splitlines()]
    assert step["vs_baseline"] == round(step["samples_per_s"] / 4.0, 2), "ours over the baseline's best samples/s"
    assert "vs_baseline" not in data_path
    assert step["impl"] == "threedgan" and step["batch"] == 2 and step["precision"] == "float32"
    assert step["recipe"] == "stable", "the CPU mode times the default recipe"
    assert step["median_s"] > 0 and step["samples_per_s"] > 0 and step["tflops"] > 0
    assert step["data_format"] in ("channels_last", "channels_first"), "the resolved layout, not 'auto'"
    assert step["deconvolution"] in ("transposed", "subpixel")
    assert data_path["volumes"] == 6 and data_path["cold_load_s"] >= 0 and data_path["feed_batches_per_s"] > 0
    assert data_path["bytes_per_volume"] == 4096, "held bit-packed at 32³"


def test_a_baseline_without_times_is_one_error_line(tmp_path, capsys):
    benchmark = load_benchmark()
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"recipe": "other", "samples_per_s": 1}\nnot json\n')
    assert benchmark.main(["--cpu", "--baseline", str(empty)]) == 2
    missing = tmp_path / "missing.jsonl"
    assert benchmark.main(["--cpu", "--baseline", str(missing)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-2:]
    assert str(empty) in lines[-2] and "samples_per_s" in lines[-2] and str(missing) in lines[-1]
