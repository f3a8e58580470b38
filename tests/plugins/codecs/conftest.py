"""Makes ``codec_support`` (shared test helpers) importable by the codec tests.

The suite runs with ``--import-mode=importlib``, which keeps test directories off
``sys.path``; the helpers module has a unique name, so adding this one directory
cannot shadow anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)
