"""What the ConnectomeBench segment-classification task is: classes, columns, defaults.

Everything here is a plain constant, so every stage (matching, scoring, conversation,
evaluation) agrees on the same letters, strings and column spellings.
"""

DEFAULT_DATASET = "jeffbbrown2/ConnectomeBench"
DEFAULT_CONFIG = "MICrONS, Segment Classification"
DEFAULT_DATASET_SPLIT = "train"
DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"

# letter -> ground-truth description, exactly as stored in the dataset.
CLASSES: dict[str, str] = {
    "a": "a single soma and process(es)",
    "b": "multiple somas (and processes)",
    "c": "Processes without a soma: These can be axons, dendrites, synapses",
    "d": "Nucleus",
    "e": "Non-neuronal types. These can be glial cells, blood vessels.",
    "f": "None of the above.",
    "g": "Unsure",
}
LETTERS: tuple[str, ...] = tuple(CLASSES)
DESCRIPTION_TO_LETTER: dict[str, str] = {v: k for k, v in CLASSES.items()}

# Ground-truth label column: older dataset revisions say `ground_truth`, newer `class_description`.
LABEL_COLUMNS: tuple[str, ...] = ("ground_truth", "class_description")

# The three views, in prompt order. Older revisions store `*_path`, newer `*_image`.
VIEWS: tuple[str, ...] = ("front", "side", "top")
IMAGE_COLUMN_STYLES: dict[str, tuple[str, ...]] = {
    "new": tuple(f"option_1_{v}_image" for v in VIEWS),
    "old": tuple(f"option_1_{v}_path" for v in VIEWS),
}

ID_COLUMNS: tuple[str, str] = ("proofread_root_id", "current_root_id")
BBOX_COLUMNS: tuple[str, ...] = ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")

# What the teacher CSV writes when the <analysis> tags were missing from its response.
MISSING_ANALYSIS = "Analysis tags not found in response."

SPLITS: tuple[str, ...] = ("train", "val", "test")


def image_columns(columns) -> tuple[str, ...] | None:
    """The three view columns present in ``columns`` (either spelling), or None if absent."""
    cols = set(columns)
    for names in IMAGE_COLUMN_STYLES.values():
        if all(n in cols for n in names):
            return names
    return None


def label_column(columns) -> str | None:
    """The ground-truth column present in ``columns``, or None."""
    cols = set(columns)
    return next((c for c in LABEL_COLUMNS if c in cols), None)
