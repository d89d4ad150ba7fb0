import argparse
import re

from efficientps_ros.bench import run_bench


def test_bench_prints_the_baseline_and_every_variant_with_ratios(capsys):
    args = argparse.Namespace(config="small", checkpoint=None, device="cpu", precision="fp32",
                              sizes="64x128", iterations=1)
    assert run_bench(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("64x128")]
    labels = [re.split(r"\s{2,}", row)[1] for row in rows]
    assert labels[0].startswith("network only") and "baseline" in labels[0]
    assert [label.split()[1] for label in labels[1:]] == ["fp32", "bf16"]
    assert rows[0].endswith("x1.00")
    for row in rows:
        median, p95, ratio = re.findall(r"(\d+\.\d+)", row)[-3:]
        assert float(median) > 0 and float(p95) >= float(median) and float(ratio) > 0
