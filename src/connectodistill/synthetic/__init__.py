"""The offline kit: everything needed to run the pipeline without the Hub or a GPU.

- ``make_tiny_student(path, kind="qwen3-vl")``: a tiny randomly-initialised student on disk, of
  any family of core/families.py (``"qwen3.5"``, ...).
- ``make_benchmark(path, n=...)``: a ConnectomeBench-like parquet whose images show the class.
- ``make_teacher_csvs(benchmark_path, out_dir, k=5, accuracy=0.85)``: teacher CSVs in the
  real format, with realistic defects.

See docs/offline-kit.md.
"""

from .benchmark import make_benchmark
from .student import make_tiny_student
from .teacher import ANALYSIS_DETAIL, ANALYSIS_PHRASES, make_teacher_csvs

__all__ = ["ANALYSIS_DETAIL", "ANALYSIS_PHRASES", "make_benchmark", "make_teacher_csvs", "make_tiny_student"]
