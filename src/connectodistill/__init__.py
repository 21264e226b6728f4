"""connectodistill: distil a teacher's ConnectomeBench answers into a small Qwen-VL student.

The data flows ``teacher_csv -> matching -> scoring -> prompts/conversation -> training -> evaluation -> reporting``; each CLI
verb is one function here, importable from a notebook::

    from connectodistill import merge, train, evaluate, report, demo

Heavy libraries (torch, transformers, datasets) are imported only when a verb runs.
"""

from importlib import import_module

__version__ = "0.1.0"

# verb -> module; resolved lazily so `import connectodistill` stays fast.
_VERBS = {
    "merge": "merging",
    "train": "training",
    "evaluate": "evaluation",
    "report": "reporting",
    "demo": "offline_demo",
    "export": "exporting",
    "predict": "prediction",
}

__all__ = ["__version__", *_VERBS]


def __getattr__(name: str):
    if name in _VERBS:
        return getattr(import_module(f"connectodistill.{_VERBS[name]}"), name)
    raise AttributeError(f"module 'connectodistill' has no attribute {name!r}")
