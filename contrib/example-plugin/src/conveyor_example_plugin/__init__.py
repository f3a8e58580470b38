"""An example third-party Conveyor plugin.

It registers, through its own entry points (see ``pyproject.toml``):

* ``compactjson`` in ``conveyor.serializers`` — :class:`CompactJSONSerializer`;
* ``deflate`` in ``conveyor.compressors`` — :class:`RawDeflateCompressor`;
* ``example-trace`` in ``conveyor.hooks`` — the module :mod:`conveyor_example_plugin.hooks`.

Nothing registers at import time: Conveyor imports a plugin the first time its name is
needed, so importing this package has no side effects.
"""

from .compressor import RawDeflateCompressor
from .serializer import CompactJSONSerializer

__all__ = ["CompactJSONSerializer", "RawDeflateCompressor"]
