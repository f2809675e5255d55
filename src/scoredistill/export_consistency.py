"""Export a consistency student of a diffusers teacher as a stock pipeline folder.

``export_consistency_pipeline`` writes ``OUT/pipeline/``: ``ConsistencyModelPipeline`` +
``LCMScheduler`` for a ``sources.diffusers_consistency.LCMConsistency``, the pair ``export.py``
writes for a few-step DMD student (its module docstring: why the pipeline's loop is the LCM
sampler). The scheduler keeps the student's own ``timestep_scaling`` (LCM's 10, not 1e4: its
boundary blend is part of the student) and ``original_inference_steps`` = the training grid, so
1, 2, 4, ... steps all run; its table is the teacher's cut after the grid's top timestep
(``export.cut_lcm_scheduler``), so a grid topped below k = N - 1 starts there.
"""

from __future__ import annotations

from pathlib import Path

from .export import cut_lcm_scheduler, frozen, labels_text
from .io import atomic_folder
from .sources.diffusers_consistency import LCMConsistency
from .teachers.diffusers import DiffusersTeacher

__all__ = ["export_consistency_pipeline"]


def export_consistency_pipeline(
    student: LCMConsistency, teacher: DiffusersTeacher, out_dir: str | Path, *, note: str = ""
) -> Path:
    """Write ``out_dir/pipeline/``: ``ConsistencyModelPipeline`` + ``LCMScheduler`` (module
    docstring) running ``student`` at any step count up to its ``original_steps``."""
    from diffusers import ConsistencyModelPipeline

    n = student.n_table  # the teacher's table, cut after a topped grid's top timestep
    lcm = cut_lcm_scheduler(teacher, n, student.original_steps, student.timestep_scaling)
    pipe = ConsistencyModelPipeline(unet=frozen(student.denoiser.model), scheduler=lcm)
    labels = ", class_labels=[0] * 16" if student.num_classes else ""
    grids = [f"{k}: {list(student.timesteps(k))}" for k in (1, 2, 4) if k <= student.original_steps]
    how = (
        "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/pipeline", local_files_only=True)\n'
        "g = torch.Generator().manual_seed(0)\n"
        f"images = pipe(batch_size=16, num_inference_steps=4, generator=g, "
        f'output_type="np"{labels}).images  # (16, H, W, C)\n```'
    )
    readme = (
        f"# Consistency student distilled with scoredistill\n\n{how}\n\n"
        f"- Stock `ConsistencyModelPipeline` + `LCMScheduler` (`timestep_scaling` "
        f"{student.timestep_scaling:g}, `original_inference_steps` {student.original_steps}: "
        f"the training grid{_cut(n, student.n_train)}). Any `num_inference_steps` from 1 to that "
        "grid runs; "
        f"timesteps per step count: {'; '.join(grids)}.\n"
        "- Images are the samples x in [-1, 1] mapped to (x + 1) / 2, clipped to [0, 1].\n"
        + labels_text(student, teacher, pipe=True)  # type: ignore[arg-type]
        + (f"\n{note}\n" if note else "")
    )
    with atomic_folder(Path(out_dir) / "pipeline") as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
    return Path(out_dir) / "pipeline"


def _cut(n: int, n_train: int) -> str:
    """The README's note on a table cut after a topped grid's top timestep."""
    if n == n_train:
        return ""
    return (
        f", on the teacher's {n_train}-entry table cut after {n} entries: the grid tops at {n - 1}"
    )
