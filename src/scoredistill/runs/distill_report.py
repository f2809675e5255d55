"""The ``distill`` run's write-up: the D_real / D_fake preview panels, the student's place among
the teacher's samplers, and ``report.md`` (split from ``runs.distill``, which trains)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["PREVIEW_TIMES", "placement", "save_previews", "write_report"]


PREVIEW_TIMES = (0.15, 0.4, 0.7)  # fractions of the sampler's time range


def save_previews(path: Path, testbed, critic, x: torch.Tensor, labels) -> None:
    """``D_real`` beside ``D_fake`` on the same noised student samples at a few times: where the
    critic still disagrees with the teacher is where the generator is pushed."""
    from ..eval.plots import save_panels
    from ..objectives._ingredients import add_noise, sample_t

    rng = torch.Generator().manual_seed(0)
    real, fake = (
        {"student x": x},
        {"exact data": testbed.truth.sample(len(x), rng=rng, cond=labels)},
    )
    with torch.no_grad():
        for u in PREVIEW_TIMES:  # one row of D_real over one row of D_fake
            t = sample_t(x.shape[0], testbed.teacher.schedule, (u, u), rng, dtype=x.dtype)
            x_t, _, _, sigma = add_noise(x, t, testbed.teacher.schedule, rng)
            level = f"t={t[0].item():.3g}, σ={sigma[0].item():.3g}"
            real[f"D_real ({level})"] = testbed.teacher.denoise(x_t, t, labels)
            fake[f"D_fake ({level})"] = critic.denoise(x_t, t, labels)
    save_panels(testbed, real | fake, path, labels=labels)


def placement(testbed, cfg, metrics: dict) -> str:
    """The student's row inside the teacher's sampler × NFE table (same n, same seeds)."""
    from ..eval.baseline import baseline_rows, exact_rows
    from ..eval.report import baseline_markdown

    n, seed = cfg.train.eval_samples, cfg.train.seed
    rows, _ = baseline_rows(testbed, ("ddim", "dpmpp-2m"), (1, 2, 4, 8, 16), n, seed)
    # the student's "wall s" is its sampling time, like the teacher rows (metrics.json's wall_s
    # is the whole run)
    rows.append(
        {"sampler": f"**student ({cfg.method})**", **metrics, "wall_s": metrics["sample_s"]}
    )
    rows.sort(key=lambda r: (r["nfe"], r["sampler"]))
    rows.extend(exact_rows(testbed, n, seed))
    table = {"testbed": testbed.name, "schedule": cfg.schedule, "n": n, "seed": seed, "rows": rows}
    return baseline_markdown(table)


def write_report(
    out: Path, cfg, metrics: dict, history: list, init: dict, teacher_table: str
) -> None:
    from ..eval.report import COLUMNS, format_value

    keys = [k for k, _ in COLUMNS if k in metrics and k != "wall_s"]
    lines = [
        f"# {cfg.method} on {cfg.testbed}",
        "",
        f"Objective: `{cfg.objective}`",
        "",
        "| step | " + " | ".join(keys) + " |",
        "|---:|" + "---:|" * len(keys),
    ]
    for row in [{"step": 0, **metrics["initial"]}, *history, {"step": cfg.train.steps, **metrics}]:
        lines.append(f"| {row['step']} | " + " | ".join(format_value(row[k]) for k in keys) + " |")
    lines += [
        "",
        f"Wall time {metrics['wall_s']:.1f} s; student NFE {metrics['nfe']}. Compare with the teacher's "
        f"sampler table: `scoredistill baseline --testbed {cfg.testbed}`.",
        "",
        f"Critic initialised by {init['steps']} DSM steps on teacher samples "
        f"(final loss {init['final_loss']:.4g}, {init['wall_time_s']:.1f} s).",
        "",
        "## Where the student lands among the teacher's samplers",
        "",
        teacher_table,
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
