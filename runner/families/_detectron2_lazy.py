"""LazyConfig (.py) models of the detectron2 family (runner.families.detectron2.config): the
zoo file loaded by detectron2, the run's thresholds set where its objects take them, and
`arch_options` as overrides of its keys, each checked against the keys the file has and the
arguments of the objects it builds."""

from __future__ import annotations

import difflib

# The run's thresholds in a LazyConfig's model, by the argument each meta-architecture takes
# them as (R-CNN box predictors, dense detectors themselves); set where the object takes it.
LAZY_THRESHOLDS = {
    "score_thresh": ("test_score_thresh",),
    "nms_thresh": ("test_nms_thresh",),
    "detections_per_image": ("test_topk_per_image", "max_detections_per_image"),
}


def _arguments(node) -> set[str]:
    """The keys a LazyConfig node may hold: those it has, and, where it calls a `_target_`
    (LazyCall), the keyword arguments the target takes (its defaults are not in the file)."""
    import inspect

    from detectron2.utils.registry import locate

    names = {str(key) for key in node}
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        target = locate(target)
    if target is not None:
        try:
            parameters = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature
            parameters = []
        names |= {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names


def lazy_config(cfg, options: dict):
    """The LazyConfig of cfg.arch (detectron2's model_zoo.get_config: LazyConfig.load), with
    the run's thresholds and `options` (cfg.arch_options, flattened to dotted keys) as overrides
    of its keys ("model.roi_heads.num_classes": 3). A key the file does not have is refused,
    naming the nearest: LazyConfig's own overrides would add it, and instantiate would fail
    later, or not at all."""
    from detectron2 import model_zoo
    from omegaconf import OmegaConf

    lazy = model_zoo.get_config(cfg.arch, trained=False)
    if "model" not in lazy:
        raise ValueError(f"model.arch={cfg.arch}: the LazyConfig has no `model`")
    model = lazy.model
    predictors = OmegaConf.select(model, "roi_heads.box_predictors")  # Cascade: one per stage
    if predictors is None:
        predictors = [OmegaConf.select(model, "roi_heads.box_predictor")]
    for owner in [model, *[p for p in predictors if p is not None]]:
        accepted = _arguments(owner)
        for option, keys in LAZY_THRESHOLDS.items():
            for key in keys:
                if key in accepted:
                    owner[key] = getattr(cfg, option)
    for key, value in options.items():
        error = _lazy_key_error(lazy, key)
        if error:
            raise ValueError(
                f"model.arch_options.{key}={value!r}: not a key of the LazyConfig {cfg.arch} "
                f"({error})"
            )
        OmegaConf.update(lazy, key, value, merge=False)
    return lazy


def _lazy_key_error(lazy, key: str) -> str:
    """Why `key` (dotted) names nothing in the LazyConfig `lazy`, naming the nearest keys where
    it goes astray, or ''."""
    from omegaconf import OmegaConf

    node, path = lazy, []
    for part in key.split("."):
        if OmegaConf.is_list(node) and part.isdigit() and int(part) < len(node):
            node, path = node[int(part)], [*path, part]
            continue
        if not OmegaConf.is_dict(node):
            return f"{'.'.join(path)} holds a value, not keys"
        accepted = _arguments(node)
        if part not in accepted:
            near = difflib.get_close_matches(part, sorted(accepted), n=3, cutoff=0.0)
            where = ".".join(path) or "the top"
            return f"{where} has no {part!r}; nearest: {', '.join(near)}"
        if part not in node:  # an argument the file leaves at its default: a value
            last = len(path) == len(key.split(".")) - 1
            return "" if last else f"{'.'.join([*path, part])} holds a value, not keys"
        node, path = node[part], [*path, part]
    return ""
