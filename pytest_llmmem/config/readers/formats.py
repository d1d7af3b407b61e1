"""Reading a trainer config by its format: the document, the format detected or given, and the one module
that maps that format's keys. Apart from the package's ``__init__`` because every format module imports
:class:`Mapper` from there; loaded only for a run with ``from = "train.yaml"``.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from pathlib import Path
from typing import Optional

from ...errors import ConfigError, one_of, shown_name
from . import FORMATS, Mapper, Reading, axolotl, detect, litgpt, llama_factory, load_document, torchtune, trl


def read(path: Path, fmt: Optional[str], base_dir: Path, recipe: str = "", shown: str = "") -> Reading:
    """``path`` mapped to our run keys; ``fmt`` None means detect it. ``shown`` is how messages name
    the file (its errors carry their YAML line)."""
    data, lines = load_document(path)
    if not isinstance(data, dict):
        raise ConfigError(f'"{shown_name(str(path), 120)}" holds no mapping of settings; expected a trainer config.')
    if fmt is None:
        fmt = detect(data)
        if fmt is None:
            raise ConfigError(f'cannot tell which trainer "{shown_name(str(path), 120)}" is for.',
                              hint=f"Add format = ... beside from: {one_of(FORMATS)}.")
    module = {"axolotl": axolotl, "llama-factory": llama_factory, "torchtune": torchtune, "trl": trl, "litgpt": litgpt}[fmt]
    mapper = Mapper(fmt, path, data, recipe, lines, shown)
    mapper.check_keys()
    module.read(mapper, base_dir)
    return mapper.reading()
