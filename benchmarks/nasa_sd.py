"""SNOOPI's NASA through the diffusers attention processor on one-step students of the bundled
text-to-image teacher, against output-space negative CFG (``docs/text_to_image.md``)::

    OMP_NUM_THREADS=1 python benchmarks/nasa_sd.py      # runs/sd2-sidlsg-s{0,1,2}/pipeline

Students: the exported pipelines of ``scoredistill distill --preset sid-lsg-sd --seed S --out
runs/sd2-sidlsg-sS`` (one step, LCM scheduler at t = 625), sampled by the stock
``DiffusionPipeline`` with ``guidance_scale = 1`` and ``cross_attention_kwargs``; student seed
``S`` uses noise seed ``S``. Compared on the same noise ``z``: the positive prompt alone
(NASA alpha = 0), NASA at alpha in ``--alphas`` (``sources.nasa_attention.enable_nasa``) and
output-space negative CFG ``x = G(z, P) + w (G(z, P) - G(z, N))`` on the latents at ``--cfg``.

Designs (each a list of (positive P, negative N) pairs, ``--per-pair`` samples each):

- ``remove-digit``: P = the empty prompt (the unconditional model, every digit), N = "a
  handwritten d", d = 0..9: the paper's claim in its clean form, "everything but d";
- ``remove-bold`` / ``remove-thin``: P = "a handwritten d", N = "a bold / thin handwritten d"
  (the teacher's style words; its un-styled prompt is the *middle* ink tercile);
- ``other-digit``: P = "a handwritten d", N = "a handwritten d'" for confusable pairs
  (degenerate: a sample shows one digit, so P alone rarely shows d').

Metrics (digits feature network, ``eval.features``): negative share (the classifier reads N's
digit; for styles, ink above/below the training digits' per-digit 2/3 / 1/3 ink quantile, the
rule that made the style prompts, ``train.sd_teacher.digit_prompts``), prompt accuracy (reads
P's digit), mean ink, FD to the teacher's own samples of P (DDIM 10 steps, CFG 2 = the
students' guidance) and FD to the *target*: those teacher samples that do not show N.
Prints a table, writes JSON to ``benchmarks/out/nasa_sd.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scoredistill.data import load_digits_images
from scoredistill.eval.features import image_metrics, load_digits_feature_net
from scoredistill.sources.nasa_attention import disable_nasa, enable_nasa

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assets" / "teachers" / "digits-sd" / "pipeline"
STUDENT = "runs/sd2-sidlsg-s{seed}/pipeline"
PAIRS = [(3, 8), (8, 3), (1, 7), (7, 1), (4, 9), (9, 4), (5, 6), (6, 5), (0, 6), (2, 3)]


def designs() -> dict[str, list[tuple[str, str, int | None, int | str]]]:
    """``name -> [(P, N, P's digit or None, N's digit or style)]``."""
    h = "a handwritten {}".format
    return {
        "remove-digit": [("", h(d), None, d) for d in range(10)],
        "remove-bold": [(h(d), f"a bold handwritten {d}", d, "bold") for d in range(10)],
        "remove-thin": [(h(d), f"a thin handwritten {d}", d, "thin") for d in range(10)],
        "other-digit": [(h(d), h(e), d, e) for d, e in PAIRS],
        # NASA-T's one negative for every prompt (docs/text_to_image.md); last, so the others keep their seeds
        "remove-bold-any": [(h(d), "a bold handwritten", d, "bold") for d in range(10)],
    }


def ink(x: Tensor) -> Tensor:
    """Mean brightness in [0, 1] of ``x: (N, 1, 8, 8)`` in [-1, 1] (``digit_prompts``' ink)."""
    return (x.flatten(1) + 1).mean(1) / 2


def ink_terciles() -> Tensor:
    """``(10, 2)``: per digit, the 1/3 and 2/3 ink quantiles of the training digits."""
    data = load_digits_images("train")
    q = torch.tensor([1 / 3, 2 / 3])
    return torch.stack([ink(data.x[data.labels == d]).quantile(q) for d in range(10)])


class Sampler:
    """One pipeline: prompt embeddings, fixed-noise latents, decoding to ``(N, 1, 8, 8)``.
    ``folder``: a pipeline folder, or a run folder holding ``pipeline/`` (full student) or
    ``lora/`` (a LoRA student, loaded as its README says into the teacher ``base``)."""

    def __init__(self, folder: Path, base: Path = TEACHER) -> None:
        from diffusers import DiffusionPipeline, LCMScheduler
        from diffusers.utils import logging

        logging.disable_progress_bar()
        folder = Path(folder)
        lora = folder / "lora"
        if (folder / "pipeline").is_dir():
            folder = folder / "pipeline"
        self.pipe = DiffusionPipeline.from_pretrained(
            base if lora.is_dir() else folder, local_files_only=True
        )
        if lora.is_dir():
            self.pipe.load_lora_weights(lora)
            self.pipe.scheduler = LCMScheduler.from_pretrained(lora / "scheduler")
        self.pipe.set_progress_bar_config(disable=True)
        unet = self.pipe.unet.config
        self.shape = (unet.in_channels, unet.sample_size, unet.sample_size)

    def embed(self, prompts: list[str]) -> Tensor:
        return self.pipe.encode_prompt(prompts, "cpu", 1, False)[0]

    def latents(self, pos: Tensor, z: Tensor, steps: int = 1, cfg: float = 1.0,
                neg: Tensor | None = None, **kw: Any) -> Tensor:  # fmt: skip
        """Latents from noise ``z`` for embeddings ``pos``; ``neg``: the CFG negative prompt."""
        null = self.embed([""]).expand(len(pos), -1, -1) if neg is None else neg
        with torch.no_grad():
            return self.pipe(prompt_embeds=pos, negative_prompt_embeds=null, latents=z.clone(),
                             num_inference_steps=steps, guidance_scale=cfg,
                             output_type="latent", **kw).images  # fmt: skip

    def decode(self, lat: Tensor) -> Tensor:
        vae = self.pipe.vae
        with torch.no_grad():
            x = vae.decode(lat / vae.config.scaling_factor).sample.clamp(-1, 1)
        return x.mean(1, keepdim=True)


def pair_labels(pairs, per: int) -> tuple[Tensor, list]:
    """Per sample (``per`` consecutive per pair): P's digit (-1: none) and N's digit or style."""
    p_digit = torch.tensor([-1 if p is None else p for _, _, p, _ in pairs]).repeat_interleave(per)
    return p_digit, [n for _, _, _, n in pairs for _ in range(per)]


def shows_negative(x: Tensor, pairs, per: int, net, terc: Tensor) -> Tensor:
    """Which samples show N: its digit (classifier) or its style (the per-digit ink rule)."""
    p_digit, neg = pair_labels(pairs, per)
    if isinstance(neg[0], int):
        with torch.no_grad():
            return net.logits(x).argmax(1) == torch.tensor(neg)
    lo, hi = terc[p_digit, 0], terc[p_digit, 1]
    return torch.where(torch.tensor([n == "bold" for n in neg]), ink(x) > hi, ink(x) < lo)


def score(x, pairs, per, ref, ref_target, net, terc) -> dict[str, float]:
    """Metrics of samples ``x`` (``per`` consecutive samples per pair) for one design."""
    p_digit, _ = pair_labels(pairs, per)
    out = {"neg_share": shows_negative(x, pairs, per, net, terc).double().mean().item(),
           "ink": ink(x).mean().item()}  # fmt: skip
    if bool((p_digit >= 0).all()):
        with torch.no_grad():
            out["acc"] = (net.logits(x).argmax(1) == p_digit).double().mean().item()
    to_p = image_metrics(x, reference=ref)
    to_t = image_metrics(x, reference=ref_target)
    return out | {"fd_p": to_p["fd"], "fd_target": to_t["fd"], "recall_target": to_t["recall"]}


def teacher_samples(teacher: Sampler, pos_t: list[str], g, args, neg_t=None) -> Tensor:
    """The teacher's samples (DDIM ``--teacher-steps``, CFG ``--teacher-cfg``) of ``pos_t``,
    with ``neg_t`` as its CFG negative prompt if given (the multi-step way)."""
    z = torch.randn(len(pos_t), *teacher.shape, generator=g)
    neg = None if neg_t is None else teacher.embed(neg_t)
    lat = teacher.latents(teacher.embed(pos_t), z, args.teacher_steps, args.teacher_cfg, neg)
    return teacher.decode(lat)


def student_latents(student: Sampler, pos: Tensor, neg: Tensor, z: Tensor, args):
    """``name -> latents``: NASA per alpha (through ``cross_attention_kwargs``), CFG per w."""
    out: dict[str, Tensor] = {}
    enable_nasa(student.pipe.unet, 0.0)
    for a in args.alphas:
        kw = {"negative_encoder_hidden_states": neg, "nasa_alpha": a}
        out[f"nasa@{a:g}"] = student.latents(pos, z, cross_attention_kwargs=kw)
    disable_nasa(student.pipe.unet)
    g_p, g_n = student.latents(pos, z), student.latents(neg, z)
    torch.testing.assert_close(out["nasa@0"], g_p, atol=1e-5, rtol=0)  # alpha 0 = the stock UNet
    for w in args.cfg:
        out[f"cfg@{w:g}"] = g_p + w * (g_p - g_n)
    return out


def run_seed(seed: int, args, terc: Tensor, net) -> dict:
    teacher, student = Sampler(args.teacher), Sampler(ROOT / args.student.format(seed=seed))
    rows: dict[str, dict] = {}
    refs: dict[tuple, tuple[Tensor, Tensor]] = {}  # P list -> (held, ref): shared by designs
    for i, (name, pairs) in enumerate(designs().items()):
        if name not in args.designs:
            continue
        per = args.per_pair
        pos_t = [p for p, _, _, _ in pairs for _ in range(per)]
        neg_t = [q for _, q, _, _ in pairs for _ in range(per)]
        start = time.perf_counter()
        if tuple(pos_t) not in refs:  # the teacher's P: ``held`` its own row, ``ref`` the reference
            g = torch.Generator().manual_seed(1000 * seed + 1 + i)
            refs[tuple(pos_t)] = teacher_samples(teacher, pos_t * 2, g, args).split(len(pos_t))
        held, ref = refs[tuple(pos_t)]
        target = ref[~shows_negative(ref, pairs, per, net, terc)]  # P's samples without N
        g = torch.Generator().manual_seed(1000 * seed + 101 + i)
        with_neg = teacher_samples(teacher, pos_t, g, args, neg_t)
        teacher_s = time.perf_counter() - start
        z = torch.randn(len(pos_t), *student.shape, generator=torch.Generator().manual_seed(seed))
        lat = student_latents(student, student.embed(pos_t), student.embed(neg_t), z, args)
        student_s = time.perf_counter() - start - teacher_s
        rows[name] = {k: score(student.decode(v), pairs, per, ref, target, net, terc)
                      for k, v in lat.items()}  # fmt: skip
        rows[name]["teacher, P"] = score(held, pairs, per, ref, target, net, terc)
        rows[name]["teacher, N as CFG negative"] = score(with_neg, pairs, per, ref, target, net,
                                                         terc)  # fmt: skip
        rows[name]["_info"] = {"n": len(z), "n_ref": len(ref), "n_target": len(target),
                               "teacher_s": teacher_s, "student_s": student_s}  # fmt: skip
        print(f"seed {seed} {name}: teacher {teacher_s:.1f} s, student {student_s:.1f} s",
              flush=True)  # fmt: skip
    return rows


def summary(per_seed: dict[int, dict]) -> dict:
    seeds = list(per_seed)
    out: dict = {}
    for design, rows in per_seed[seeds[0]].items():
        out[design] = {}
        for row, vals in rows.items():
            if row.startswith("_"):
                continue
            out[design][row] = {}
            for k in vals:
                xs = [per_seed[s][design][row][k] for s in seeds]
                sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                out[design][row][k] = {"mean": statistics.fmean(xs), "std": sd, "per_seed": xs}
    return out


def print_table(summ: dict) -> None:
    keys = ["neg_share", "acc", "ink", "fd_p", "fd_target", "recall_target"]
    for design, rows in summ.items():
        print(f"\n## {design}\n\n| row | " + " | ".join(keys) + " |")
        print("|---|" + "---:|" * len(keys))
        for row, vals in rows.items():
            cells = [
                f"{vals[k]['mean']:.3g} ± {vals[k]['std']:.2g}" if k in vals else "—" for k in keys
            ]
            print(f"| {row} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=TEACHER)
    p.add_argument("--student", default=STUDENT, help="pipeline folder, {seed} filled in")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--designs", nargs="+", default=["remove-digit", "remove-bold", "remove-thin",
                                                    "other-digit"], choices=list(designs()))  # fmt: skip
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.5, 1.0])
    p.add_argument("--cfg", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--per-pair", type=int, default=30)  # n = 300 a design (CPU budget)
    p.add_argument("--teacher-steps", type=int, default=10)  # DDIM; FD 53.8 at 8 vs 46.6 at 20
    p.add_argument("--teacher-cfg", type=float, default=2.0)  # the students' kappa
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "nasa_sd.json")
    a = p.parse_args()
    if 0.0 not in a.alphas:
        a.alphas = [0.0, *a.alphas]  # the positive prompt alone, the reference row
    terc, net = ink_terciles(), load_digits_feature_net()
    per_seed = {s: run_seed(s, a, terc, net) for s in a.seeds}
    summ = summary(per_seed)
    print_table(summ)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                  "per_seed": per_seed, "summary": summ}, indent=1))  # fmt: skip
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
