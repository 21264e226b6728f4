"""Stage 1, teacher CSVs -> merged parquet: read the CSVs (``teacher_csv``), match them to the
benchmark and score every response (``matching``), split leak-proof groups (``splits``), write
the rows and the metadata (``recipe``, ``metadata``)."""

from .recipe import MergeResult, merge

__all__ = ["MergeResult", "merge"]
