"""Weight variants (``teachers.diffusers_variants``): folders written by
``save_pretrained(..., variant="fp16")``, which plain ``from_pretrained`` cannot read.

(a) ``pick_variant`` on file layouts written out by name (standard, one variant, two, sharded
variants and their index); (b) a ``StableDiffusionPipeline`` folder and a pixel ``UNet2DModel``
folder re-saved by diffusers as fp16-only variants load as teachers whose denoisers equal the
standard folders' bit for bit (``save_pretrained`` keeps the float32 values; only the names
change), and stock ``from_pretrained`` without ``variant`` fails on the same folder; (c) a LoRA
student of the variant teacher exports a README that says to load the base with ``variant=``;
(d) two variants and none asked, or an absent variant asked, are one error naming the folder.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from scoredistill.teachers.diffusers import TeacherFolderError, load_diffusers_teacher
from scoredistill.teachers.diffusers_latent import load_latent_teacher
from scoredistill.teachers.diffusers_variants import (
    folder_variants,
    has_standard_weights,
    pick_variant,
)

UNET = "diffusion_pytorch_model"


def _folder(tmp_path, *names):
    folder = tmp_path / "part"
    folder.mkdir()
    for name in ("config.json", *names):
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("names", "wanted", "picked"),
    [
        ((f"{UNET}.safetensors",), "", None),
        ((f"{UNET}.fp16.safetensors",), "", "fp16"),
        ((f"{UNET}.safetensors", f"{UNET}.fp16.safetensors"), "", None),  # standard first
        ((f"{UNET}.safetensors", f"{UNET}.fp16.safetensors"), "fp16", "fp16"),
        ((f"{UNET}.safetensors",), "fp16", None),  # a component without it: standard
        ((f"{UNET}.fp16.safetensors", f"{UNET}.bf16.safetensors"), "bf16", "bf16"),
        (
            (
                "model.fp16-00001-of-00002.safetensors",
                "model.fp16-00002-of-00002.safetensors",
                "model.safetensors.index.fp16.json",
            ),
            "",
            "fp16",
        ),
        (("model-00001-of-00002.safetensors", "model.safetensors.index.json"), "", None),
        (("tokenizer_config.json", "vocab.json"), "", None),  # no weights: from_pretrained's
    ],
)
def test_pick_variant(tmp_path, names, wanted, picked):
    assert pick_variant(_folder(tmp_path, *names), wanted) == picked


def test_several_variants_and_none_asked_is_an_error(tmp_path):
    folder = _folder(tmp_path, f"{UNET}.fp16.safetensors", f"{UNET}.bf16.safetensors")
    assert folder_variants(folder) == ["bf16", "fp16"] and not has_standard_weights(folder)
    with pytest.raises(ValueError, match=r"\['bf16', 'fp16'\] and none was asked.*'variant'"):
        pick_variant(folder)
    with pytest.raises(ValueError, match="variant 'fp32' is not among them"):
        pick_variant(folder, "fp32")


def _probe(teacher, cond=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, teacher.dim, generator=g)
    with torch.no_grad():
        return teacher.denoise(x, torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), cond)


def test_fp16_only_sd_folder_loads_and_equals_the_standard_one(sd_folder, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    variant_folder = tmp_path / "fp16-only"
    pipe.save_pretrained(variant_folder, variant="fp16")
    assert (variant_folder / "unet" / f"{UNET}.fp16.safetensors").is_file()
    assert not has_standard_weights(variant_folder / "text_encoder")
    with pytest.raises(OSError):  # what a user meets with stock diffusers and no variant
        DiffusionPipeline.from_pretrained(variant_folder, local_files_only=True)
    ref, ours = load_latent_teacher(sd_folder), load_latent_teacher(variant_folder)
    assert ref.variant == "" and ours.variant == "fp16"
    for teacher in (ref, ours):
        teacher.set_prompt_labels(["a handwritten 3", "a bold handwritten 7"])
    ids = torch.tensor([0, 1, -1])
    assert torch.equal(_probe(ours, ids), _probe(ref, ids))
    # a LoRA student of it: the README says how to load its base
    from scoredistill.export_latent import export_latent_student
    from scoredistill.sources.diffusers import DiffusersGenerator
    from scoredistill.sources.lora import AdapterView, add_lora

    add_lora(ours.model, "student", rank=2)
    gen = DiffusersGenerator(ours, steps=1, denoiser=AdapterView(ours, "student"))
    path = export_latent_student(gen, ours, tmp_path / "out", steps=1, prompt="a handwritten 3")
    assert 'variant="fp16"' in (path / "README.md").read_text()


def test_fp16_only_pixel_unet_folder_loads(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )  # fmt: skip
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.save_pretrained(tmp_path / "std")
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    ref = load_diffusers_teacher(tmp_path / "std")
    ours = load_diffusers_teacher(tmp_path / "fp16")
    assert torch.equal(_probe(ours), _probe(ref))
    pipe.save_pretrained(tmp_path / "fp16", variant="bf16")  # now two variants, none standard
    with pytest.raises(TeacherFolderError, match=r"unet.*\['bf16', 'fp16'\] and none was asked"):
        load_diffusers_teacher(tmp_path / "fp16")
    ours = load_diffusers_teacher(tmp_path / "fp16", variant="bf16")
    assert torch.equal(_probe(ours), _probe(ref))


def test_distill_cli_on_an_fp16_only_folder(sd_folder, prompts, tmp_path):
    """End to end: ``distill --preset swiftbrush-sd --quick`` (a LoRA student) on the fp16-only
    folder exits 0 and its README names the variant."""
    from diffusers import StableDiffusionPipeline

    from scoredistill.cli import main

    folder = tmp_path / "fp16-only"
    StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True).save_pretrained(
        folder, variant="fp16"
    )
    out = tmp_path / "run"
    code = main(["distill", "--preset", "swiftbrush-sd", "--teacher", str(folder), "--prompts",
                 prompts, "--quick", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert 'variant="fp16"' in (out / "lora" / "README.md").read_text()
