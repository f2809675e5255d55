"""Per-encoder prompts in ``scoredistill optimize --teacher SD_DIR --prompts FILE``
(``runs.optimize_sd.load_teacher`` through ``runs.sd_prompts.prompt_streams``, as ``distill-sd``).

A tiny SDXL pipeline with random weights (``test_sdxl_teacher``), saved by diffusers: (a) after
the optimize-sd setup the teacher's prompt table equals the pipeline's own ``encode_prompt(prompt,
prompt_2=, negative_prompt_2=)`` and differs from the ``prompt_2=None`` encoding, and particle
``i`` is conditioned on row ``i mod P``; (b) on a field (``source.kind=field``) the ``prompt_2``
list follows ``field_prompts``' rewrite (the chosen line, then its view suffixes); (c) a key the
folder has no encoder for (the SD 1.x layout of ``conftest.sd_folder``), a line-count mismatch
and a missing file are one ``ConfigError`` naming the key, before any weights load, also through
the CLI.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pipeline_helpers import save_pipelines  # noqa: E402
from scoredistill.cli import main  # noqa: E402
from scoredistill.config import ConfigError  # noqa: E402
from scoredistill.runs import optimize_sd, optimize_sd_field  # noqa: E402
from scoredistill.runs.optimize_sd import OptimizeSDConfig, build_task, load_teacher  # noqa: E402
from test_sd_prompt_2 import ATOL, PROMPTS, PROMPTS_2, _file, no_weights  # noqa: E402, F401
from test_sdxl_teacher import _pipe as sdxl_pipe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NEG = {"negative_prompt": "blurry", "negative_prompt_2": "grainy"}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """``(pipeline, its folder)`` of the tiny SDXL layout."""
    return save_pipelines(tmp_path_factory, {"sdxl": sdxl_pipe})["sdxl"]


@pytest.fixture
def files(tmp_path) -> tuple[str, str]:
    """``(--prompts file, prompts_2 file)``, line-paired."""
    return _file(tmp_path, "p.txt", PROMPTS), _file(tmp_path, "p2.txt", PROMPTS_2)


def _cfg(folder, prompts: str, source: dict | None = None, **keys) -> OptimizeSDConfig:
    cfg = OptimizeSDConfig(teacher=str(folder), prompts=prompts, **keys)
    return dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, **(source or {})))


def _encode(pipe, prompts, prompts_2=None, **neg) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return pipe.encode_prompt(prompts, prompt_2=prompts_2, **neg)


def test_particles_take_prompt_2_as_the_pipeline_encodes_it(sdxl, files):
    pipe, folder = sdxl
    sets = [f"teacher={folder}", f"prompts={files[0]}", f"prompts_2={files[1]}",
            *(f"{k}={v}" for k, v in NEG.items()), "source.n_particles=5"]  # fmt: skip
    cfg, objective = optimize_sd.resolve("sds-sd", sets)
    teacher = load_teacher(cfg)
    table = teacher.prompt_table
    embeds, null, pooled, null_pooled = _encode(pipe, PROMPTS, PROMPTS_2, **NEG)
    for ours, theirs in [(table.embeds, embeds), (table.null, null[:1]),
                         (table.pooled, pooled), (table.null_pooled, null_pooled[:1])]:  # fmt: skip
        torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    # the test can fail: prompt_2 changes the rows and the null row
    base = _encode(pipe, PROMPTS, None, **{"negative_prompt": NEG["negative_prompt"]})
    assert (table.embeds - base[0]).abs().max() > 1e-2
    assert (table.pooled - base[2]).abs().max() > 1e-2
    assert (table.null - base[1][:1]).abs().max() > 1e-2
    # particle i is prompted by prompt i mod P, with line i mod P of prompts_2
    batch = build_task(cfg, objective, teacher)["draw"](torch.Generator().manual_seed(0))
    assert batch.cond.tolist() == [0, 1, 0, 1, 0]
    rows = teacher.network_condition(batch.cond, 5, torch.device("cpu"))
    want = embeds[torch.arange(5) % 2]
    torch.testing.assert_close(rows["encoder_hidden_states"], want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("views", [True, False])
def test_field_streams_follow_the_field_prompt_rewrite(sdxl, tmp_path, views):
    pipe, folder = sdxl
    prompts, prompts_2 = ["cat", "dog", "owl"], ["ink", "oil", "wax"]  # 16 tokens with a view
    p, p2 = _file(tmp_path, "p.txt", prompts), _file(tmp_path, "p2.txt", prompts_2)
    source = {"kind": "field", "prompt_index": 1, "view_prompts": views}
    teacher = load_teacher(_cfg(folder, p, source, prompts_2=p2, negative_prompt_2="grainy"))
    suffix = [f", {v}" if views else "" for v in optimize_sd_field.VIEW_SUFFIXES]
    want = [("dog", "oil")] + [("dog" + s, "oil" + s) for s in suffix]
    assert teacher.prompt_rows == tuple(want)  # an independent spelling of the rewrite
    table_prompts, table_prompts_2 = (list(c) for c in zip(*want, strict=True))
    # negative_prompt "" (not the pipeline's None, which zeroes the row): the teacher's default
    neg = {"negative_prompt": "", "negative_prompt_2": "grainy"}
    embeds, null, pooled, _ = _encode(pipe, table_prompts, table_prompts_2, **neg)
    table = teacher.prompt_table
    for ours, theirs in [(table.embeds, embeds), (table.null, null[:1]), (table.pooled, pooled)]:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    # the test can fail: the views reach both encoders (or, without views, change nothing)
    spread = (table.pooled[1:] - table.pooled[:1]).abs().amax(dim=1)
    assert bool((spread > 1e-2).all()) if views else bool((spread == 0).all())
    # the rewrite itself: lists as field_prompts, negatives (strings) unchanged
    cfg = _cfg(folder, p, source).source
    streams = {"prompt_2": prompts_2, "negative_prompt_2": "grainy"}
    want = {
        "prompt_2": optimize_sd_field.field_prompts(prompts_2, cfg),
        "negative_prompt_2": "grainy",
    }
    assert optimize_sd_field.field_streams(streams, cfg) == want


@pytest.mark.usefixtures("no_weights")
def test_a_key_without_its_encoder_is_refused_before_weights_load(sd_folder, files):
    """``prompts_2`` / ``negative_prompt_2`` on the SD 1.x layout (the bundled teacher's)."""
    for key, value in (("prompts_2", files[1]), ("negative_prompt_2", "grainy")):
        with pytest.raises(ConfigError, match=rf"^config key '{key}': .*takes prompt only") as err:
            load_teacher(_cfg(sd_folder, files[0], **{key: value}))
        assert "\n" not in str(err.value)


@pytest.mark.usefixtures("no_weights")
@pytest.mark.parametrize("kind", ["particles", "field"])
def test_bad_prompt_files_name_the_key_before_weights_load(sdxl, files, tmp_path, kind):
    folder = sdxl[1]
    cases = {
        str(tmp_path / "missing.txt"): "is not a file",
        _file(tmp_path, "three.txt", [*PROMPTS_2, "x"]): "holds 3 prompts but --prompts",
    }
    for path, needle in cases.items():
        cfg = _cfg(folder, files[0], {"kind": kind}, prompts_2=path)
        with pytest.raises(ConfigError, match=r"^config key 'prompts_2': ") as err:
            load_teacher(cfg)
        assert needle in str(err.value), err.value
    with pytest.raises(ConfigError, match=r"^config key 'prompts_3': .*takes prompt, prompt_2"):
        load_teacher(_cfg(folder, files[0], {"kind": kind}, prompts_3=files[1]))
    with pytest.raises(AssertionError, match="weights loaded"):  # the checks pass: it loads
        load_teacher(_cfg(folder, files[0], {"kind": kind}, prompts_2=files[1]))


def _cli(folder, prompts: str, out, *sets: str) -> int:
    args = ["optimize", "--preset", "sds-sd", "--teacher", str(folder), "--prompts", prompts,
            "--out", str(out), *(a for s in sets for a in ("--set", s))]  # fmt: skip
    return main(args)


def test_cli_refuses_in_one_line(sd_folder, sdxl, files, tmp_path, capsys):
    assert _cli(sd_folder, files[0], tmp_path / "o", f"prompts_2={files[1]}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'prompts_2'" in err[0] and "takes prompt only" in err[0], err
    # a negative prompt_2 acts only through guidance (runs.sd.check_negative_prompt)
    sets = ("negative_prompt_2=grainy", "objective.guidance=1")
    assert _cli(sdxl[1], files[0], tmp_path / "o", *sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'negative_prompt_2'" in err[0] and "guidance" in err[0], err
    assert not (tmp_path / "o").exists()


def test_the_report_names_the_per_encoder_prompt_keys_set():
    from dataclasses import replace

    from scoredistill.runs.optimize_sd import OptimizeSDConfig, _stream_lines

    cfg = OptimizeSDConfig()
    assert _stream_lines(cfg) == []
    cfg = replace(cfg, prompts_2="p2.txt", negative_prompt_2="blurry")
    assert _stream_lines(cfg) == [
        "Per-encoder prompts: `prompts_2=p2.txt`, `negative_prompt_2=blurry`."
    ]
