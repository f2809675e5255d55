"""Run the KD benchmark (docs/kd.md, "Benchmark") with several single-thread worker processes.

Each worker runs ``run_kd_suite`` on its share of the presets into the same folder; a final
call reads every run back and writes ``results.json`` and ``results.md``. Finished runs are
never repeated, so the script resumes::

    OMP_NUM_THREADS=1 python benchmarks/kd_suite.py --out runs/kd-suite --workers 2 [--quick]
        [--presets NAME ...]

Without ``--presets`` it runs ``bench.kd.suite_presets()``: every method preset and every
procedure preset.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path


def _work(out: str, presets: list[str], quick: bool, seeds: list[int]) -> None:
    import torch

    from scoredistill.bench.kd import run_kd_suite

    torch.set_num_threads(1)
    run_kd_suite(Path(out), quick=quick, seeds=tuple(seeds), presets=presets)


def main() -> None:
    """Parse the flags, fan the presets out to workers, then write the combined table."""
    from scoredistill.bench.kd import suite_presets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--presets", nargs="+", default=None)
    args = parser.parse_args()
    names = args.presets or suite_presets(args.quick)
    shares = [names[i :: args.workers] for i in range(args.workers)]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_work, args=(args.out, share, args.quick, args.seeds))
        for share in shares
        if share
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    out = Path(args.out)  # read every finished preset back and write the combined table
    done = [
        n
        for n in suite_presets(args.quick)
        if all((out / n / f"seed-{s}" / "metrics.json").exists() for s in args.seeds)
    ]
    _work(args.out, done, args.quick, args.seeds)
    print((Path(args.out) / "results.md").read_text())


if __name__ == "__main__":
    main()
