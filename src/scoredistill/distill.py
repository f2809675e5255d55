"""``scoredistill distill``: one-step generator distillation runs from presets.

A run is a ``DistillConfig`` (method, testbed, objective fields, loop, networks). Presets are
plain dicts of overrides; ``--set key=value`` overrides any field (``objective.<field>`` reaches
the method's own dataclass, so an unknown or ill-typed objective field is rejected by name
before training starts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .config import ConfigError, apply_overrides, from_dict, to_dict
from .io import atomic_write_json
from .objectives import OBJECTIVES
from .train.common import JsonlLogger
from .train.two_player import TwoPlayerConfig, train_two_player

__all__ = ["PRESETS", "CriticConfig", "DistillConfig", "GeneratorConfig", "resolve", "run_distill"]


@dataclass(frozen=True)
class GeneratorConfig:
    kind: Literal["one_step", "few_step"] = "one_step"
    steps: int = 4  # few_step: student NFE K (DMD2's 4-step SDXL schedule)
    hidden: int = 256
    depth: int = 3


@dataclass(frozen=True)
class CriticConfig:
    hidden: int = 256
    depth: int = 4
    init_steps: int = 400  # DSM steps fitting the teacher before distillation ("init from teacher")
    init_lr: float = 2e-3
    init_batch: int = 1024


@dataclass(frozen=True)
class DistillConfig:
    method: str = "dmd"
    testbed: str = "ring8"
    schedule: str = "edm"
    objective: dict[str, Any] = field(default_factory=dict)
    train: TwoPlayerConfig = field(default_factory=TwoPlayerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)


# CPU presets: each states its budget; values that differ from a paper's default are set here,
# never in the objective. ring8: an MLP generator trained from scratch needs lr 1e-3 (1e-4 left
# every mode uncovered after 300 steps); ~4 min for 1500 steps on 2 cores.
_RING = {
    "train.steps": 1500,
    "train.batch_size": 512,
    "train.eval_every": 500,
    "train.lr_generator": 1e-3,
}
PRESETS: dict[str, dict[str, Any]] = {
    "dmd2-ring8": {"method": "dmd", "testbed": "ring8", **_RING},
    "vsd-ring8": {"method": "vsd", "testbed": "ring8", **_RING},
    # SiD on 0.05-wide modes diverges with its t range reaching sigma = 0.002 (gradients through
    # the exact teacher's input across mode boundaries); sigma >= 0.32 converges (benchmarks.md)
    "sid-ring8": {
        "method": "sid",
        "testbed": "ring8",
        **_RING,
        "train.critic_updates": 1,
        "train.lr_generator": 1e-4,
        "objective.t_range": [0.3, 0.8],
    },
    "sfd-cond2d": {"method": "sfd", "testbed": "cond2d", **_RING, "train.critic_updates": 1},
    "dmd2-digits": {
        "method": "dmd",
        "testbed": "digits",
        "train.steps": 1500,
        "train.batch_size": 256,
    },
}


def _objective(method: str, fields: dict[str, Any], overrides: list[str]):
    if method not in OBJECTIVES:
        raise ConfigError(f"unknown method {method!r}; valid: {', '.join(OBJECTIVES)}")
    obj = from_dict(OBJECTIVES[method], fields, prefix="objective.")
    try:
        return apply_overrides(obj, overrides)
    except ConfigError as err:  # name the key as the user wrote it
        raise ConfigError(str(err).replace("config key '", "config key 'objective.", 1)) from None


def resolve(preset: str | None, sets: list[str]) -> tuple[DistillConfig, Any]:
    """Preset + ``--set`` overrides -> (validated config, objective instance)."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    items = [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in PRESETS.get(preset, {}).items()
    ]
    items += list(sets)
    obj_sets = [s.split(".", 1)[1] for s in items if s.startswith("objective.")]
    cfg = apply_overrides(DistillConfig(), [s for s in items if not s.startswith("objective.")])
    objective = _objective(cfg.method, cfg.objective, obj_sets)
    cfg = dataclasses.replace(cfg, objective=dataclasses.asdict(objective))
    return cfg, objective


def _label_sampler(testbed):
    """``(n, rng) -> labels`` from the class prior, or None for an unconditional testbed."""
    from .eval.baseline import draw_labels

    return (lambda n, rng: draw_labels(testbed, n, rng)) if testbed.conditional else None


def _student_samples(generator, testbed, n: int, seed: int):
    """The fixed evaluation draw of a generator: ``(x, labels, sampling seconds, rng)``; the rng
    is returned so that later draws (the exact-data panel) continue the same stream."""
    rng = torch.Generator().manual_seed(seed + 12345)
    sample_cond = _label_sampler(testbed)
    labels = sample_cond(n, rng) if sample_cond else None
    start = time.perf_counter()
    with torch.no_grad():
        x = generator(generator.sample_latent(n, rng), labels)
    return x, labels, time.perf_counter() - start, rng


def _evaluator(testbed, n: int, seed: int):
    from .eval.metrics import testbed_metrics

    def evaluate(generator) -> dict[str, float]:
        x, labels, _, _ = _student_samples(generator, testbed, n, seed)
        return testbed_metrics(testbed, x.double(), labels=labels, seed=seed + 1)

    return evaluate


def _build(cfg: DistillConfig, testbed):
    from .sources.critic import init_critic_from_teacher, make_critic
    from .sources.generators import FewStepGenerator, OneStepGenerator

    torch.manual_seed(cfg.train.seed)
    k = testbed.truth.num_classes
    g = cfg.generator
    if g.kind == "few_step":
        gen = FewStepGenerator.from_mlp(
            testbed.dim,
            testbed.teacher.schedule,
            steps=g.steps,
            hidden=g.hidden,
            depth=g.depth,
            num_classes=k,
        )
    else:
        gen = OneStepGenerator(testbed.dim, hidden=g.hidden, depth=g.depth, num_classes=k)
    critic = make_critic(
        testbed.dim,
        schedule=testbed.teacher.schedule,
        num_classes=k,
        hidden=cfg.critic.hidden,
        depth=cfg.critic.depth,
    )
    sample_cond = _label_sampler(testbed)

    def teacher_sample(n: int, rng: torch.Generator):
        labels = sample_cond(n, rng) if sample_cond else None
        x = testbed.truth.sample(n, rng=rng, cond=labels)
        return (x, labels) if labels is not None else x

    init = init_critic_from_teacher(
        critic,
        teacher_sample,
        steps=cfg.critic.init_steps,
        batch_size=cfg.critic.init_batch,
        lr=cfg.critic.init_lr,
        seed=cfg.train.seed,
        progress=True,
    )
    return gen, critic, init


def run_distill(
    cfg: DistillConfig, objective: Any, out: Path, resume: bool = False
) -> dict[str, Any]:
    """Build, train, evaluate and write the run folder; returns the final metrics."""
    from .eval.metrics import testbed_metrics
    from .eval.plots import save_panels, save_training_curves
    from .teachers.testbeds import get_testbed

    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(out / "config.json", to_dict(cfg))
    gen, critic, init = _build(cfg, testbed)
    evaluate = _evaluator(testbed, cfg.train.eval_samples, cfg.train.seed)
    start = time.perf_counter()
    result = train_two_player(
        cfg.train,
        objective=objective,
        generator=gen,
        critic=critic,
        teacher=testbed.teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng),
        sample_cond=_label_sampler(testbed),
        evaluate=evaluate,
        out_dir=out,
        resume=resume,
    )
    ema = result["ema"]
    if not result["is_main_process"]:  # one writer per run folder
        return {}
    # one draw serves the final metrics, samples.npz and the figure (a few-step student
    # re-noises, so a second draw would not be the one that was scored)
    x, labels, sample_s, rng = _student_samples(
        ema, testbed, cfg.train.eval_samples, cfg.train.seed
    )
    metrics = {
        **testbed_metrics(testbed, x.double(), labels=labels, seed=cfg.train.seed + 1),
        "nfe": getattr(ema, "nfe", 1),
        "wall_s": time.perf_counter() - start,
        "world_size": result["world_size"],
        "sample_s": sample_s,
    }
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    arrays = {"x": x.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
    np.savez(out / "samples.npz", **arrays)
    teacher_x = testbed.truth.sample(cfg.train.eval_samples, rng=rng, cond=labels)
    save_panels(
        testbed,
        {f"student ({metrics['nfe']} NFE, EMA)": x, "exact data": teacher_x},
        out / "samples.png",
        labels=labels,
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    save_training_curves(records, out / "curves.png")
    _write_report(out, cfg, metrics, result["history"], init, _placement(testbed, cfg, metrics))
    return metrics


def _placement(testbed, cfg: DistillConfig, metrics: dict) -> str:
    """The student's row inside the teacher's sampler × NFE table (same n, same seeds)."""
    from .eval.baseline import baseline_rows, exact_rows
    from .eval.report import baseline_markdown

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


def _write_report(
    out: Path, cfg: DistillConfig, metrics: dict, history: list, init: dict, placement: str
) -> None:
    from .eval.report import COLUMNS, format_value

    keys = [k for k, _ in COLUMNS if k in metrics and k != "wall_s"]
    lines = [
        f"# {cfg.method} on {cfg.testbed}",
        "",
        f"Objective: `{cfg.objective}`",
        "",
        "| step | " + " | ".join(keys) + " |",
        "|---:|" + "---:|" * len(keys),
    ]
    for row in [*history, {"step": cfg.train.steps, **metrics}]:
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
        placement,
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
