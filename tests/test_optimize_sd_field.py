"""A voxel field under a text-to-image teacher (``source.kind=field``, presets ``esd-sd``,
``vsd-sd-field``, ``sds-sd-field``) and the camera-conditioned LoRA critic it uses.

The camera critic is checked against diffusers itself: adding ``E(camera)`` to the time
embedding by a hook must equal a UNet with ``class_embed_type="identity"`` (diffusers' own sum of
a class embedding and the time embedding) given ``class_labels = E(camera)``. The teacher on the
shared base must stay unchanged. Runs use the ``--quick`` budget on ``conftest.sd_folder``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_helpers import camera_critic
from scoredistill.cli import main
from scoredistill.parametrization import NULL_LABEL, guided
from scoredistill.runs.optimize_sd import OptimizeSDConfig, load_teacher
from scoredistill.runs.optimize_sd_field import VIEW_SUFFIXES, field_prompts
from scoredistill.sources.camera_lora import PromptCamera
from scoredistill.teachers.mlp import azimuth_features

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(preset, sd_folder, prompts, out, *extra):
    return ["optimize", "--preset", preset, "--teacher", str(sd_folder), "--prompts", prompts,
            "--out", str(out), *extra]  # fmt: skip


@pytest.fixture
def field_teacher(sd_folder, prompts):
    cfg = OptimizeSDConfig(teacher=str(sd_folder), prompts=prompts)
    cfg = OptimizeSDConfig(**{**cfg.__dict__, "source": type(cfg.source)(kind="field")})
    return load_teacher(cfg)


def _inputs(teacher, n: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, teacher.dim, generator=g)
    t = torch.linspace(0.2, 0.8, n, dtype=torch.float64)
    return x, t


class _WithClassLabels(torch.nn.Module):
    """``unet`` called with fixed ``class_labels`` (the teacher's network call is otherwise its own)."""

    def __init__(self, unet, class_labels: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.class_labels = unet, class_labels

    def forward(self, x, timestep, **kwargs):
        return self.unet(x, timestep=timestep, class_labels=self.class_labels, **kwargs)


def test_prompt_table_holds_the_prompt_then_its_three_views(field_teacher):
    table = field_teacher.prompt_table.prompts
    assert table[0] == "a handwritten 3"
    assert table[1:] == tuple(f"a handwritten 3, {v}" for v in VIEW_SUFFIXES)
    cfg = type(OptimizeSDConfig().source)(kind="field", prompt_index=2)
    with pytest.raises(ValueError, match=r"source\.prompt_index"):
        field_prompts(["a", "b"], cfg)


def test_prompt_camera_drops_the_camera_and_keeps_the_prompt():
    pc = PromptCamera(torch.tensor([0, 2, 1]), torch.tensor([10.0, 200.0, 90.0]))
    null = pc.null_like()
    assert torch.equal(null.prompts, pc.prompts)
    assert (null.azimuth == NULL_LABEL).all()
    dropped = pc.with_null_rows(torch.tensor([False, True, False]))
    assert dropped.azimuth.tolist() == [10.0, float(NULL_LABEL), 90.0]
    both = PromptCamera.cat([null, pc])
    assert len(both) == 6 and torch.equal(both.azimuth[3:], pc.azimuth)
    feats = azimuth_features(dropped.azimuth, 3, torch.zeros(()))
    assert feats[1].abs().sum() == 0 and torch.allclose(feats[0].norm(), torch.tensor(1.0))


def test_camera_hook_equals_diffusers_class_embedding_and_spares_the_teacher(field_teacher):
    from diffusers import UNet2DConditionModel

    teacher = field_teacher
    x, t = _inputs(teacher)
    prompts = torch.tensor([1, 2, 3, 0])
    with torch.no_grad():
        before = teacher.denoise(x, t, prompts)
        critic = camera_critic(teacher)
        pc = PromptCamera(torch.zeros(4, dtype=torch.long), torch.tensor([0.0, 90.0, 180.0, 300.0]))
        ours = critic.denoise(x, t, pc)
        after = teacher.denoise(x, t, prompts)  # hook registered, critic idle: no camera
        assert torch.equal(before, after)
        assert not torch.allclose(ours, critic.denoise(x, t, pc.null_like()), atol=1e-4)
        # the same network with diffusers' identity class embedding, fed E(camera)
        ref_unet = UNet2DConditionModel.from_config(
            {**teacher.model.config, "class_embed_type": "identity"}
        )
        base = {k.replace(".base_layer", ""): v for k, v in teacher.model.state_dict().items()
                if "lora_" not in k}  # fmt: skip
        assert not ref_unet.load_state_dict(base, strict=True).missing_keys
        emb = critic.embed(azimuth_features(pc.azimuth, 4, torch.zeros(())))
        real = teacher.model
        teacher.model = _WithClassLabels(ref_unet, emb)
        try:
            ref = teacher.denoise(x, t, pc.prompts)
        finally:
            teacher.model = real
    # LoRA B = 0 at init: the adapter adds nothing, so the difference is the camera alone
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_esd_camera_cfg_is_the_lam_mix_of_the_two_critic_branches(field_teacher):
    teacher = field_teacher
    critic = camera_critic(teacher)
    x, t = _inputs(teacher)
    pc = PromptCamera(torch.zeros(4, dtype=torch.long), torch.tensor([5.0, 95.0, 185.0, 275.0]))
    lam = 0.3
    with torch.no_grad():
        mixed = guided(critic.denoise, 1.0 - lam)(x, t, pc)
        by_hand = lam * critic.denoise(x, t, pc.null_like()) + (1 - lam) * critic.denoise(x, t, pc)
    torch.testing.assert_close(mixed, by_hand, rtol=1e-5, atol=1e-5)


def test_esd_quick_run_trains_field_lora_and_camera_embedding(sd_folder, prompts, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert main(_args("esd-sd", sd_folder, prompts, out, "--quick")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"]["field"] == 4 * 16**3
    assert {"view_spread", "n_views"} <= metrics.keys() and metrics["n_views"] == 24
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (24, 64) and np.abs(data["x"]).max() <= 1.0
    assert data["labels"].tolist()[:1] == [1]  # azimuth 0: the front-view prompt
    state = load_file(out / "checkpoints" / "step-3" / "state.safetensors")
    camera = [v for k, v in state.items() if "embed.2.weight" in k and "critic" in k]
    assert camera and camera[0].abs().sum() > 0  # starts at zero: it trained
    field0 = [v for k, v in state.items() if k.endswith("source/density_raw")]
    assert field0 and np.isfinite(field0[0].numpy()).all()


def test_lam_needs_a_field_and_the_field_accepts_it(sd_folder, prompts, tmp_path, capsys):
    code = main(_args("vsd-sd", sd_folder, prompts, tmp_path / "o", "--set", "objective.lam=0.5"))
    assert code == 2 and "source.kind=field" in capsys.readouterr().err
    assert main(_args("esd-sd", sd_folder, prompts, tmp_path / "o", "--dry-run")) == 0
    report = json.loads(capsys.readouterr().out)["networks"]
    assert report["trainable_params"]["field"] == 4 * 16**3 and report["trainable_params"]["critic"]


@pytest.mark.parametrize(
    "method", ["csd", pytest.param("cds", marks=pytest.mark.slow),
               pytest.param("asd", marks=pytest.mark.slow),
               pytest.param("bsd", marks=pytest.mark.slow),
               pytest.param("ism", marks=pytest.mark.slow)],
)  # fmt: skip
def test_the_successors_optimise_a_field_with_their_defaults(method, sd_folder, prompts, tmp_path):
    out = tmp_path / method
    assert main(_args(f"{method}-sd-field", sd_folder, prompts, out, "--quick")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["kind"] == "field" and config["method"] == method
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == {"field": 4 * 16**3, "critic": 0}
    assert metrics["view_spread"] != metrics["initial"]["view_spread"]  # the field moved


def test_a_tv_prior_smooths_the_field_and_needs_one(sd_folder, prompts, tmp_path, capsys):
    runs = {w: tmp_path / f"tv{w}" for w in (0, 1000)}
    for w, out in runs.items():
        extra = ("--quick", "--set", f"source.tv_weight={w}")
        assert main(_args("sds-sd-field", sd_folder, prompts, out, *extra)) == 0
    rows = {w: [json.loads(r) for r in (out / "metrics.jsonl").open()] for w, out in runs.items()}
    assert all("prior" in r for r in rows[1000] if "loss" in r)
    assert not any("prior" in r for r in rows[0])

    def tv(out):  # the final field's total variation, recomputed from its checkpoint
        from safetensors.torch import load_file

        from scoredistill.scene.field3d import VoxelField

        state = load_file(out / "checkpoints" / "step-3" / "state.safetensors")
        field = VoxelField(16, init="constant")
        for name in ("density_raw", "colour_raw"):
            getattr(field, name).data.copy_(state[f"model/source/{name}"])
        return float(field.total_variation())

    assert tv(runs[1000]) < tv(runs[0])
    capsys.readouterr()
    code = main(_args("sds-sd", sd_folder, prompts, tmp_path / "p", "--set", "source.tv_weight=1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "source.tv_weight" in err[0]
