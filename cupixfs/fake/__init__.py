"""The fake Cupix server: API routes, signed blob store, fault knobs and sample data.

It lets the filesystem be developed, tested and benchmarked without the real cloud. Modules:
``sample`` (dataset generator), ``dataset`` (loaded model and blob files), ``signing``
(pre-signed URLs), ``faults`` (failure knobs), ``stats`` (request counters), ``api`` /
``blobs`` / ``admin`` (route logic), ``server`` (HTTP transport), ``cli`` (``python -m``).
"""

from .faults import Faults
from .sample import SampleSpec, generate, profile
from .server import FakeServer

__all__ = ["FakeServer", "Faults", "SampleSpec", "generate", "profile"]
