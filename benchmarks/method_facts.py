"""The registry's facts (models.METHODS) that the table scripts read without importing torch: compare_paper.py
and seed_table.py read results tables and config.json files in well under a second, and `import models` takes
about 4 s (torch). tests/test_bench_registry.py checks every fact here against the registry.
"""
# each method's (Method.encoder_option, Method.encoder_label), in registry order
ENCODERS = {"noco": ("backbone", "{}"), "revdist": ("backbone", "{}"), "recontrast": ("backbone", "{}"),
            "uniad": ("backbone", "{}"), "dinomaly": ("vit", "vit_{}")}
METHOD_NAMES = tuple(ENCODERS)
VIT_SIZES = {"vit_small_patch14_reg4_dinov2": "small", "vit_base_patch14_reg4_dinov2": "base",
             "vit_large_patch14_reg4_dinov2": "large"}  # --vit's timm names (models.dinomaly.ENCODERS) -> its sizes


def encoder_option(method):
    """The run option that names the method's encoder (Method.encoder_option; `backbone` for an unknown method)."""
    return ENCODERS.get(method, ("backbone",))[0]


def encoder_name(config):
    """The encoder of a run's config.json (Method.encoder_name)."""
    option, label = ENCODERS.get(config["method"], ("backbone", "{}"))
    return label.format(config[option])
