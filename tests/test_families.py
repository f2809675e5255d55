"""The run-family contract: one registry, one resolver, the same flags in every family."""

from __future__ import annotations

import json

import pytest

from scoredistill.cli import main
from scoredistill.config import ConfigError, to_dict
from scoredistill.runs import COMMANDS, FAMILIES, family_of


def test_presets_lists_every_preset_of_every_family(capsys) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0] for line in lines if line and not line.startswith("#")}
    every = {p for f in FAMILIES.values() for p in f.presets}
    assert listed == every and len(every) > 100
    assert all(f"# {name}:" in "\n".join(lines) for name in FAMILIES)


def test_presets_of_one_family(capsys) -> None:
    assert main(["presets", "--family", "optimize"]) == 0
    out = capsys.readouterr().out
    assert "sds-views" in out and "dmd2-digits" not in out


def _required(name: str, request, tmp_path) -> list[str]:
    """What a family cannot run without: the text-to-image families' teacher and prompts."""
    if name not in ("distill-sd", "optimize-sd"):
        return []
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten 3\na handwritten 8\n")  # sfd-sd: forget 3, safe 8
    return [f"teacher={request.getfixturevalue('sd_folder')}", f"prompts={prompts}"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_preset_has_a_description_and_resolves(name: str, request, tmp_path) -> None:
    family, required = FAMILIES[name], _required(name, request, tmp_path)
    for preset in family.presets:
        about = family.describe(preset)
        assert about and "\n" not in about, preset
        resolved = family.resolve(preset, required)
        assert resolved.preset == preset
        quick = family.resolve(preset, [*required, *family.quick(preset)])  # smoke budget too
        assert to_dict(quick.config) != to_dict(resolved.config) or not family.quick(preset)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_steps_seed_and_set_mean_the_same_in_every_family(command: str, capsys) -> None:
    family = family_of(command, None)
    preset = next(iter(family.presets))
    args = [command, "--preset", preset, "--steps", "7", "--seed", "3", "--dry-run", "--out", "x"]
    assert main(args) == 0
    cfg = json.loads(capsys.readouterr().out)
    for key, value in ((family.steps_key, 7), (family.seed_key, 3)):
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_kd_command_runs_procedure_presets_too(capsys) -> None:
    assert family_of("kd", "gkd-markov").name == "kd-procedure"
    assert family_of("kd", "kd-digits").name == "kd"
    assert main(["kd", "--preset", "gkd-markov", "--quick", "--dry-run", "--out", "x"]) == 0
    quick = json.loads(capsys.readouterr().out)
    assert main(["kd", "--preset", "gkd-markov", "--dry-run", "--out", "x"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert quick["steps"] < full["steps"]


def test_quick_flag_is_the_bench_smoke_budget(capsys) -> None:
    assert main(["distill", "--preset", "dmd2-digits", "--quick", "--dry-run", "--out", "x"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["steps"] == 60  # presets.distill.QUICK, as in `bench --quick`


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid: "):
        FAMILIES["optimize"].resolve("no-such-preset", [])
