"""The KD families' contract (presets, descriptions, quick overrides, --steps/--seed keys) and a
contract test over every registered KD method: finite loss, gradients reach the student only,
a batch of one works."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from scoredistill.bench.kd import EXPECTED, family_of, suite_presets
from scoredistill.config import ConfigError, from_dict
from scoredistill.kd.methods import METHODS, SECTIONS
from scoredistill.kd.tasks import load_task
from scoredistill.presets import kd as kd_presets
from scoredistill.presets import kd_procedures as procedure_presets
from scoredistill.runs import kd, kd_nets, kd_procedures
from scoredistill.train.kd import FeatureHooks, KDBatch, teacher_outputs

FAMILIES = (kd.FAMILY, kd_procedures.FAMILY)


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_every_preset_has_a_one_line_description(fam) -> None:
    for name in fam.presets:
        text = fam.describe(name)
        assert text.strip() and "\n" not in text, name
    module = kd_presets if fam is kd.FAMILY else procedure_presets
    assert set(module.DESCRIPTIONS) == set(fam.presets)  # no description of a missing preset


def test_every_method_preset_states_a_claim_and_claims_name_presets() -> None:
    assert set(kd_presets.PRESETS) <= set(EXPECTED)
    known = set(kd_presets.PRESETS) | set(procedure_presets.PROCEDURE_PRESETS)
    assert set(EXPECTED) <= known
    for name in suite_presets():
        assert family_of(name) in {"kd", "kd-procedure"}
    with pytest.raises(ValueError, match="kd-digits"):
        family_of("nope")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("name", sorted(procedure_presets.PROCEDURE_PRESETS))
def test_procedure_quick_overrides_give_the_preset_dicts_config(name: str) -> None:
    """``resolve(name, quick(name))`` equals the config built straight from the preset's dict
    with its ``quick`` dict merged in (how the presets read)."""
    fam = kd_procedures.FAMILY
    preset = dict(procedure_presets.PROCEDURE_PRESETS[name])
    proc = kd_procedures.PROCEDURES[preset.pop("procedure")]
    quick = preset.pop("quick", {})
    resolved = fam.resolve(name, fam.quick(name))
    assert resolved.extra is proc and resolved.preset == name
    assert resolved.config == from_dict(proc.config, _merge(preset, quick))
    assert fam.resolve(name, [f"{fam.seed_key}=7"]).config.seed == 7


def test_steps_and_seed_keys() -> None:
    for name in kd_presets.PRESETS:
        cfg = kd.FAMILY.resolve(name, [f"{kd.FAMILY.steps_key}=7", "train.seed=3"]).config
        assert cfg.train.steps == 7 and cfg.train.seed == 3
    fam = kd_procedures.FAMILY
    assert fam.resolve("gkd-markov", [f"{fam.steps_key}=7"]).config.steps == 7
    with pytest.raises(ConfigError, match=r"--steps.*rounds"):
        fam.resolve("knfu-digits", [f"{fam.steps_key}=7"])


def test_method_sections_are_config_sections() -> None:
    cfg = kd.KDConfig()
    for section, cls in SECTIONS.items():
        assert isinstance(getattr(cfg, section), cls)
    cfg = kd.resolve("acam-digits", ["acam.num_masks=3", "lelp.subclasses=2"])
    assert cfg.acam.num_masks == 3 and cfg.lelp.subclasses == 2
    with pytest.raises(ConfigError, match=r"acam\.bogus"):
        kd.resolve("acam-digits", ["acam.bogus=1"])


# ----------------------------------------------------------------------------- every method
def _preset_of(method: str) -> str:
    """The first preset that trains ``method`` (as the method or as its reference)."""
    for name, p in kd_presets.PRESETS.items():
        if method in (p.get("method"), p.get("reference")):
            return name
    return "kd-digits"


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_a_finite_loss_that_reaches_the_student_only(method: str) -> None:
    cfg = kd.resolve(_preset_of(method), [f"method={method}", "reference="])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=10))
    task = load_task(cfg.task)
    teacher = kd_nets.teacher_net(cfg, task)  # untrained: the contract does not need a good one
    if task.relevance_test is not None:
        teacher = kd.TeacherScores(teacher, cfg.retrieval.squash, cfg.retrieval.offset_std)
    teacher.eval()
    reference = kd_nets.make_net(cfg, task, task.num_classes) if method == "kdaif" else None
    plan = kd_nets.build_plan(cfg, task, teacher, reference)
    for size in (8, 1):
        idx = torch.arange(size)
        x = task.x_train[idx]
        plan.student.train()
        with FeatureHooks(plan.student, plan.student_features) as hooks:
            logits = plan.student(x)
        t_logits, t_feats = teacher_outputs(teacher, x, plan.teacher_features)
        batch = KDBatch(x, task.y_train[idx], idx, logits, t_logits, hooks.outputs, t_feats)
        plan.student.zero_grad()
        teacher.zero_grad()
        loss = plan.loss(batch)
        assert loss.ndim == 0 and math.isfinite(float(loss.detach())), (method, size)
        loss.backward()
        grads = [p.grad for p in plan.student.parameters() if p.grad is not None]
        assert any(float(g.abs().sum()) > 0 for g in grads), (method, size)
        assert all(p.grad is None for p in teacher.parameters()), (method, size)
