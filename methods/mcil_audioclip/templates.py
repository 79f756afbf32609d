"""Which prompt templates a run uses (pools in templates.yaml).

- `train`: the text-diversity pool averaged into the training prototypes: the released
  CLASSROOM pool for every dataset (`train_templates: classroom`, code mode), or the dataset's
  own pool (`dataset`, paper mode: classroom for miniARIC, av_event for SynthAV, object otherwise;
  `template_pool` overrides);
- `eval`: the dataset's single prompt template (`eval_templates: single`, the release) or the
  same pool as training (`pool`);
- `single`: always the dataset's single template; the task-similarity term of Metric 1 is
  defined on it (reference 4.2).
"""

from __future__ import annotations

from pathlib import Path

import yaml

DATASET_POOL = {"mini_aric": "classroom", "synth_av": "av_event"}
DEFAULT_TEMPLATE = "a photo of a {}."


def load_pools() -> dict[str, list[str]]:
    with open(Path(__file__).parent / "templates.yaml") as f:
        return yaml.safe_load(f)


def template_pools(cfg: dict, store) -> dict[str, list[str]]:
    pools = load_pools()
    name = cfg.get("template_pool") or DATASET_POOL.get(store.dataset, "object")
    if name not in pools:
        raise KeyError(f"template_pool {name!r} is not in methods/mcil_audioclip/templates.yaml (has {sorted(pools)})")
    single = [store.meta.get("prompt_template") or DEFAULT_TEMPLATE]
    train = pools["classroom"] if cfg["train_templates"] == "classroom" else pools[name]
    return {"train": train, "eval": single if cfg["eval_templates"] == "single" else pools[name], "single": single}
