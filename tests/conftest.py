"""Makes ``tests/support`` (helpers every test directory uses, such as
``wire_samples``) importable.

The suite runs with ``--import-mode=importlib``, which keeps test directories off
``sys.path``; the helper modules have unique names, so adding this one directory
cannot shadow anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SUPPORT = str(Path(__file__).resolve().parent / "support")
if _SUPPORT not in sys.path:
    sys.path.append(_SUPPORT)
