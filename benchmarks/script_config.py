"""train_mvtec.py's configuration for a command line, read from the script's source without running it.

    from script_config import train_config
    cfg = train_config(["--method", "dinomaly"])   # cfg.vit "base", cfg.crop_size 392, cfg.optimizer "stable_adamw"

The option constants come from utils.inference.script_defaults (what predict.py reads); the PRESETS list, and
the upper-case dicts it is built from (RD_INPUT, MULTI_CLASS, ...), are evaluated from their source, which
may hold nothing but literals, names of those dicts and `**` unpacking. utils.config.parse_config then applies
the command line and the presets exactly as the script does, so a benchmark builds its model through the
registry (models.METHODS) with the settings a run of the script would have.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.config import parse_config  # noqa: E402
from utils.inference import TRAIN_SCRIPT, script_defaults  # noqa: E402

# the syntax a preset's source may use: literals, the names of dicts defined before it, `**` and negative numbers
_PRESET_NODES = (ast.Expression, ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant, ast.Name, ast.Load,
                 ast.UnaryOp, ast.USub)


def script_presets(script=TRAIN_SCRIPT):
    """The PRESETS list of a train script, as (condition, values) pairs of plain dicts."""
    tree = ast.parse(Path(script).read_text(encoding="utf-8"))
    names = {}
    for node in tree.body:
        if "parse_config(" in ast.unparse(node):
            break
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.isupper()):
            continue
        expression = ast.Expression(node.value)
        if not all(isinstance(part, _PRESET_NODES) for part in ast.walk(expression)):
            continue  # e.g. HELP, an f-string: not a preset
        try:
            value = eval(compile(expression, str(script), "eval"), {"__builtins__": {}}, dict(names))  # noqa: S307
        except NameError:
            continue  # it names a constant that is not a literal: not a preset
        names[node.targets[0].id] = value
        if node.targets[0].id == "PRESETS":
            return [(dict(condition), dict(values)) for condition, values in value]
    raise ValueError(f"{script}: no PRESETS list of literals before its parse_config call")


def train_config(argv, script=TRAIN_SCRIPT):
    """The configuration (a namespace, as the script's cfg) train_mvtec.py runs with for this command line:
    its constants, the options of `argv` (e.g. ["--method", "revdist", "--backbone", "resnet18"]), then its
    presets for the options the command line does not give."""
    return parse_config(script_defaults(script), [str(arg) for arg in argv], presets=script_presets(script))
