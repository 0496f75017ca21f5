"""Messages and their wire codec. One source for the coordinator, clients and the board's worker:
they live in ``edgecollab.worker.protocol``, which the board's own distribution carries too."""

from .worker.protocol import *  # noqa: F403
from .worker.protocol import __all__ as __all__
