"""FD / class accuracy of a run's final draw (samples.npz) on the retained prompts only (labels
!= the forgotten prompt's), so the SFD and SiD-LSG arms are compared on the same prompts."""

import json
import sys

import numpy as np
import torch

from scoredistill.config import from_dict
from scoredistill.eval.features import image_metrics
from scoredistill.runs.sd import SDDistillConfig, prompt_digits, read_prompts, sd_paths

forget_text = sys.argv[1]
for run in sys.argv[2:]:
    with open(f"{run}/config.json") as fh:
        cfg = from_dict(SDDistillConfig, json.load(fh))
    prompts = read_prompts(sd_paths(cfg)[1])
    digits, f = prompt_digits(prompts), prompts.index(forget_text)
    d = np.load(f"{run}/samples.npz")
    x, labels = torch.from_numpy(d["x"]), torch.from_numpy(d["labels"])
    keep = labels != f
    m = image_metrics(x[keep], digits[labels[keep]], seed=cfg.train.seed + 1)
    print(
        json.dumps(
            {
                "run": run,
                "n_retained": int(keep.sum()),
                **{k: round(m[k], 4) for k in ("fd", "precision", "recall", "class_acc")},
            }
        )
    )
