"""Teacher sampler × NFE baselines on several testbeds, in one run.

    .venv/bin/python benchmarks/teacher_baselines.py [--testbeds digits,ring8,moons] [--n 2000]

Prints each table and writes ``benchmarks/out/<testbed>/baseline.{json,md}`` plus a combined
``benchmarks/out/baselines.json``. These are the rows every distilled student is compared with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scoredistill.cli import main as cli

OUT = Path(__file__).parent / "out"


def run(testbeds: list[str], n: int, seed: int) -> dict[str, dict]:
    """Run ``scoredistill baseline`` per testbed and collect the results."""
    results = {}
    for name in testbeds:
        folder = OUT / Path(name).name
        code = cli(
            [
                "baseline",
                "--testbed",
                name,
                "--n",
                str(n),
                "--seed",
                str(seed),
                "--out",
                str(folder),
            ]
        )
        if code != 0:
            raise SystemExit(code)
        results[name] = json.loads((folder / "baseline.json").read_text())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbeds", default="digits,ring8,moons")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = run(args.testbeds.split(","), args.n, args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "baselines.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT / 'baselines.json'}")


if __name__ == "__main__":
    main()
