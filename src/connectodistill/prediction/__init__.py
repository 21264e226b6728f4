"""Stage 4, the student at work: ``predict`` on new segments (``recipe`` over ``segments``
and the chunk ``files``), and ``export`` of the adapter merged into a plain model folder."""

from .exporting import export
from .recipe import predict

__all__ = ["export", "predict"]
