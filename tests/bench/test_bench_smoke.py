"""The engine benchmark runs in its quickest mode and writes its JSON and plots (no speed check:
speed targets live in the benchmarks, not in the test suite)."""

import orjson

from benchmarks import engine


def test_engine_benchmark_quick_mode_writes_its_json(sensor_model, tmp_path):
    report = engine.run(quick=True, repeats=1, batches=(1, 16), out_dir=tmp_path, artifact=sensor_model)
    path = report.write(tmp_path)
    doc = orjson.loads(path.read_bytes())
    assert doc["benchmark"] == "engine"
    assert doc["machine"]["cpu"] and doc["machine"]["versions"]["torch"]
    assert doc["settings"]["flops_per_prediction"] > doc["settings"]["flops_per_prediction_profiler"] > 0
    rates = [r for r in doc["rows"] if r.get("batch") == 16 and r["engine"] in ("torch", "onnxruntime")]
    assert rates and all(r["predictions/s"] > 0 for r in rates)
    assert {t["target"].split(" (")[0] for t in doc["targets"]} == {
        "engine >= 50% of matmul peak at batch 16"
    }
    assert all((tmp_path / name).is_file() for name in doc["plots"])


def test_quick_runs_never_write_over_the_committed_figures(tmp_path):
    from benchmarks.common import OUT_DIR, QUICK_DIR, out_dir

    assert out_dir(None, quick=True) == QUICK_DIR
    assert OUT_DIR not in QUICK_DIR.parents and QUICK_DIR != OUT_DIR
    assert out_dir(None, quick=False) == OUT_DIR
    assert out_dir(tmp_path, quick=True) == tmp_path
