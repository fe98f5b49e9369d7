"""Long fuzzing runs of the bounded fuzz tests: mutated JPEG / PNG / TIFF bytes into the decoder and into
``/v1/predict``, random ``--set`` strings into the override parser. Each test passes only when every case ends in
an image / answer or in one of defectlite's own errors (never another exception, never a 500).

    python benchmarks/fuzz.py --examples 2000       # writes benchmarks/results/fuzz.{json,md}
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from defectlite.evaluate.profile import machine
from defectlite.utils import atomic_write_json, atomic_write_text

TESTS = {
    "decoder (mutated JPEG / PNG / TIFF bytes)": "tests/test_robust.py::test_fuzzed_images_only_raise_data_errors",
    "--set override strings": "tests/test_robust.py::test_fuzzed_overrides_only_raise_config_errors",
    "HTTP /v1/predict (mutated image uploads)": "tests/test_serve.py -k fuzz",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="hypothesis examples per test")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fuzz")
    args = ap.parse_args(argv)
    root = Path(__file__).parent.parent
    env = {**os.environ, "DEFECTLITE_FUZZ_EXAMPLES": str(args.examples)}
    rows = []
    for name, test in TESTS.items():
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *test.split()],
                              cwd=root, env=env, capture_output=True, text=True)  # fmt: skip
        seconds = round(time.perf_counter() - t0, 1)
        tail = proc.stdout.strip().splitlines()[-1:]
        rows.append({"target": name, "examples": args.examples, "passed": proc.returncode == 0, "seconds": seconds,
                     "tail": tail})  # fmt: skip
        print(name, rows[-1], flush=True)
    res = {"machine": machine(), "rows": rows}
    atomic_write_json(args.out.with_suffix(".json"), res)
    lines = ["# Fuzzing (hypothesis)", "", f"Machine: {res['machine']['cpu']}.", "",
             "| target | examples | uncaught exceptions | seconds |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['target']} | {r['examples']:,} | {'0' if r['passed'] else 'FAILED'} | {r['seconds']} |"
              for r in rows]  # fmt: skip
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
