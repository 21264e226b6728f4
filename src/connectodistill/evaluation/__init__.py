"""Stage 3, run folder -> result folder -> report: the ``evaluate`` verb (``recipe``) over the
run's own inputs (``inputs``), a CV run pooled over its folds (``pooled``), the result files
(``results``), and the comparison with the teacher (``reporting``)."""

from .recipe import evaluate
from .reporting import report

__all__ = ["evaluate", "report"]
