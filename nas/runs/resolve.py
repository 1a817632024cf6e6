"""A stage's config resolved: the one place where the space's and the method's defaults are applied.

Jobs of the run layer are keyed on resolved configs (``nas.runs.jobs``), and the search and the
retrain save the config they resolved with this same function, so a config that leaves a key to
its default and one that names the default are one job.
"""

from __future__ import annotations

from typing import Any

from nas import config as config_mod


def resolve(stage: str, cfg: Any) -> Any:
    """``cfg`` with the space's and the method's defaults applied (a copy; ``cfg`` when nothing
    changes).  Search and retrain call it themselves, so a stage run outside a job saves the same."""
    from nas.spaces import get_space

    if stage == "search":
        from nas.methods import build_method, settings_models

        space = get_space(cfg.space)
        cfg = config_mod.resolve_defaults(cfg, space.search_defaults)
        owned = {k: v for model in settings_models() if set(model.model_fields) <= set(type(cfg).model_fields)
                 for k, v in model.resolved(cfg, space).items()}
        if owned:
            cfg = cfg.model_copy(update=owned)
        if cfg.channels_last and cfg.channels // build_method(cfg).partial_channels < 4:
            # torch's CPU convolution backward in channels-last format corrupts memory for convolutions
            # with one output channel (seen with torch 2.13): such tiny supernets run in the plain format
            cfg = cfg.model_copy(update={"channels_last": False})
    elif stage == "retrain":
        cfg = config_mod.resolve_defaults(cfg, get_space(cfg.space).retrain_defaults)
    return cfg
