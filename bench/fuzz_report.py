"""Run the long-form fuzz properties of tests/test_fuzz.py and print the table of docs/reliability.md.

    PYTHONPATH=src python bench/fuzz_report.py --examples 200

`--examples` is hypothesis's max_examples for each config property; the data properties get half of
it, the real-CLI property 1/100 (each call is a subprocess). Seeded (derandomize), so a rerun tries the
same inputs. Exit code 1 when any property failed (a crash or lost records).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--no-cli", action="store_true", help="skip the subprocess property")
    args = ap.parse_args()
    os.environ["SEEKTUNE_LONG"] = "1"
    os.environ["SEEKTUNE_FUZZ_EXAMPLES"] = str(args.examples)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
    import test_fuzz as tf  # noqa: E402  (reads the env above at import)

    props = [("config/mutated", tf.test_long_fuzz_config_mutated),
             ("config/unknown_key", tf.test_long_fuzz_config_unknown_key),
             ("config/wrong_type", tf.test_long_fuzz_config_wrong_types),
             ("data/generated", tf.test_long_fuzz_data_files),
             ("data/shared", tf.test_long_fuzz_real_shared_files_mutated)]
    if not args.no_cli:
        props.append(("cli", tf.test_long_fuzz_cli_data_clean))
    failures = {}
    t0 = time.time()
    for name, fn in props:
        t = time.time()
        try:
            fn()
        except BaseException as e:  # noqa: BLE001  (pytest.skip raises a BaseException too)
            if type(e).__name__ == "Skipped":
                failures[name] = f"skipped: {e}"
            else:
                failures[name] = "".join(traceback.format_exception_only(type(e), e)).strip()[:2000]
        print(f"{name}: {time.time() - t:.0f} s", file=sys.stderr)
    rows = ["| category | inputs tried | crashes (goal 0) | records lost (goal 0) | property failed |",
            "|---|---|---|---|---|"]
    for name, _ in props:
        n, crashed, lost = tf.STATS.get(name, [0, 0, 0])
        failed = failures.get(name, "no")
        rows.append(f"| {name} | {n:,} | {crashed} | {lost} | {failed.splitlines()[0] if failed != 'no' else 'no'} |")
    tot = [sum(v[i] for v in tf.STATS.values()) for i in range(3)]
    rows.append(f"| **all** | {tot[0]:,} | {tot[1]} | {tot[2]} | {len([f for f in failures.values() if not f.startswith('skipped')])} |")
    print(f"fuzz report, {datetime.date.today()}, --examples {args.examples}, {time.time() - t0:.0f} s wall")
    print("\n".join(rows))
    for name, f in failures.items():
        print(f"\n{name}:\n{f}")
    return 1 if any(not f.startswith("skipped") for f in failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
