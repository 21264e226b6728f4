"""The kit teacher's answers to a synthetic benchmark, as ConnectomeBench's CSVs.

``make_teacher_csvs`` writes them in the format of ConnectomeBench's
``segmentation_classification.py``: K rows per segment, spaced header names, float32-printed
coordinates, the prompt as a Python literal of content blocks (three image blocks, then the
text: ``teacher_prompt_text``, the kit's own words), and the small defects real answers carry
(upper case, brackets, missing tags, ambiguous answers).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from ..core.data import atomic_path
from ..core.task import (
    CLASSES,
    DESCRIPTION_TO_LETTER,
    IMAGE_COLUMN_STYLES,
    LETTERS,
    MISSING_ANALYSIS,
    VIEWS,
)

__all__ = ["ANALYSIS_DETAIL", "ANALYSIS_PHRASES", "PROMPT_OPTIONS", "make_teacher_csvs", "teacher_prompt_text"]

ANALYSIS_DETAIL = "It spans about {n} um in the front view."

# One short description per answered letter; the teacher's `analysis` picks one.
ANALYSIS_PHRASES: dict[str, tuple[str, ...]] = {
    "a": (
        "One large soma body is visible with several processes extending from it.",
        "A single round cell body sits in the middle, with thin processes radiating outward.",
        "The views show one soma and a few dendrite-like processes attached to it.",
        "There is exactly one thick cell body, and several thin branches leave it.",
    ),
    "b": (
        "Two separate cell bodies are visible, each with processes, so this is a merge.",
        "The segment contains more than one soma, joined by or carrying thin processes.",
        "I can see at least two distinct round somas in every view.",
        "Multiple cell bodies appear in the same segment, which suggests a merge error.",
    ),
    "c": (
        "Only thin branching processes are visible, with no cell body anywhere.",
        "The segment is a network of thin fibres, like an axon or dendrite fragment, without a soma.",
        "Branching processes run across the views but no soma is present.",
        "This looks like a piece of neurite: thin, branching and without a cell body.",
    ),
    "d": (
        "A single small round blob with no processes, consistent with a nucleus.",
        "The object is a compact sphere with nothing attached, which looks like a nucleus.",
        "Only one small, smooth, round shape is visible in each view, likely a nucleus.",
    ),
    "e": (
        "The shape is irregular and jagged, more like a glial cell than a neuron.",
        "A thick tube-like structure runs through the volume, consistent with a blood vessel.",
        "The morphology is non-neuronal: an irregular mass without clear soma and neurites.",
        "This looks like glia or vasculature rather than a neuron with processes.",
    ),
    "f": (
        "The segment is a scatter of small fragments that fit none of the categories.",
        "Only small disconnected pieces are visible, matching none of the listed types.",
        "Several tiny blocky fragments are spread out; none of the options describes them.",
    ),
    "g": (
        "The views are too faint and blurry to tell what this segment is.",
        "I cannot make out a clear structure; the rendering is low contrast.",
        "The segment is a vague smear, so I am unsure which category applies.",
    ),
}

# Plausible confusions of the teacher: true letter -> (wrong letters, weights).
_CONFUSIONS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "a": (("c", "b", "e", "d"), (0.5, 0.3, 0.1, 0.1)),
    "b": (("a", "c", "e"), (0.7, 0.2, 0.1)),
    "c": (("a", "e", "f", "g"), (0.45, 0.25, 0.2, 0.1)),
    "d": (("e", "a", "f"), (0.5, 0.3, 0.2)),
    "e": (("d", "c", "a", "f"), (0.35, 0.3, 0.15, 0.2)),
    "f": (("c", "e", "g"), (0.4, 0.3, 0.3)),
    "g": (("c", "f", "e"), (0.4, 0.4, 0.2)),
}

# Garbage `llm_answer` values seen when the answer tags were missing.
_GARBAGE_ANSWERS = (
    "The segment shows a soma",
    "Based on the images, this appears to be",
    "I need to look at the three views first.",
)

_TEACHER_FILE = "{model}_analysis_results_K{k}{suffix}.csv"
_CSV_COLUMNS = (
    "proofread root id",
    "current root id",
    "species",
    "xmin",
    "ymin",
    "zmin",
    "xmax",
    "ymax",
    "zmax",
    "unit",
    "index",
    "analysis",
    "llm_answer",
    "model",
    "with_description",
    "prompt",
)


_SPECIES_GUIDANCE = {
    "mouse": (
        "This segment comes from the MICrONS volume of a mouse's visual cortex. Neuronal somas "
        "there are large and round, with dendrites and an axon leaving them; nuclei are smaller, "
        "smooth ovals; glia and blood vessels have irregular or tube-like shapes."
    ),
    "fly": (
        "This segment comes from a fly's brain (FlyWire). Fly neurons are unipolar: the soma "
        "sits at the edge of the brain on a thin neurite, and most of the arbor is fine branches."
    ),
}

# The kit's own wording of the options in its prompt (deliberately not the dataset's strings,
# so answers given in the prompt's wording exercise the parser's prompt-option rule).
PROMPT_OPTIONS = {
    "a": "A single soma with its processes",
    "b": "Several somas, with processes",
    "c": "Processes without a soma (axons, dendrites, synapses)",
    "d": "A nucleus",
    "e": "Non-neuronal: glial cells or blood vessels",
    "f": "None of the above",
    "g": "Unsure",
}


def teacher_prompt_text(species: str, size: str, with_description: bool) -> str:
    """The kit teacher's prompt text (its own words, not ConnectomeBench's), in the real shape:
    the only per-sample parts are the species and the box size as the teacher printed it
    (``prompts.size_text``), and the species guidance paragraph sits before the options."""
    parts = [
        f"You are reviewing one 3D segment from an automatic reconstruction of the {species} brain. "
        "Reconstructions can merge separate cells into one segment or split one cell into pieces.",
        "The three images show the segment's mesh from the front, the side and the top. "
        f"Its bounding box measures {size} nm.",
    ]
    if with_description:
        parts.append(_SPECIES_GUIDANCE.get(species, _SPECIES_GUIDANCE["mouse"]))
    parts.append(
        "Which option best describes the segment?\n"
        + "\n".join(f"{k}) {v}" for k, v in PROMPT_OPTIONS.items())
    )
    parts.append(
        "First describe what you see inside <analysis></analysis> tags, then give the letter of "
        "your choice inside <answer></answer> tags."
    )
    return "\n\n".join(parts)


def _size_of(box_strs: list[str]) -> str:
    from ..core.prompts import size_text

    return size_text([float(x) for x in box_strs])


def _prompt_literal(images: list[bytes] | None, text: str, rng) -> str:
    if images is None:  # metadata-only benchmark: short fake base64
        data = [base64.b64encode(rng.bytes(24)).decode("ascii") for _ in VIEWS]
    else:
        data = [base64.b64encode(b).decode("ascii") for b in images]
    blocks: list[dict] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}}
        for d in data
    ]
    blocks.append({"type": "text", "text": text})
    return repr(blocks)


def _confusion(true_letter: str, rng) -> str:
    wrong, w = _CONFUSIONS[true_letter]
    return str(rng.choice(wrong, p=np.asarray(w) / sum(w)))


def _one_response(
    true_letter: str, correct: bool, usual_mistake: str, defects: bool, rng
) -> tuple[str, str]:
    """(analysis, llm_answer). Defects never change what the answer rule scores."""
    if correct:
        letter = true_letter
    else:  # mistakes are mostly systematic: the segment's usual confusion
        letter = usual_mistake if rng.random() < 0.7 else _confusion(true_letter, rng)
    phrases = ANALYSIS_PHRASES[letter]
    # A measured detail makes the K analyses of a segment differ, as a real teacher's do.
    detail = ANALYSIS_DETAIL.format(n=int(rng.integers(5, 60)))
    analysis = f"{phrases[int(rng.integers(len(phrases)))]} {detail}"
    answer = letter
    if not defects:
        return analysis, answer
    u = rng.random()
    if not correct and u < 0.30:  # unparseable rows are only ever drawn for wrong answers
        kind = rng.random()
        if kind < 0.4:
            return MISSING_ANALYSIS, ""
        if kind < 0.7:
            return MISSING_ANALYSIS, _GARBAGE_ANSWERS[int(rng.integers(len(_GARBAGE_ANSWERS)))]
        other = str(rng.choice([x for x in LETTERS if x != letter]))
        return analysis, f"{letter} or {other}"
    u = rng.random()
    if u < 0.05:
        answer = letter.upper()
    elif u < 0.08:
        answer = f"{letter})"
    elif u < 0.10:
        answer = f"({letter})"
    elif u < 0.12:
        answer = f" {letter} "
    elif u < 0.14:
        answer = f"**{letter}**"
    elif u < 0.17:  # the letter with the start of the dataset's description
        words = CLASSES[letter].split()
        answer = f"{letter}) {' '.join(words[:max(1, len(words) // 2)])}..."
    elif u < 0.19:  # the letter with the prompt's own wording
        answer = f"{letter.upper()}. {PROMPT_OPTIONS[letter]}"
    elif u < 0.21:  # the full description alone
        answer = CLASSES[letter]
    elif u < 0.25:  # analysis tags lost, answer tags kept: a valid letter, no analysis
        return MISSING_ANALYSIS, letter
    return analysis, answer


def make_teacher_csvs(
    benchmark_path,
    out_dir,
    k: int = 5,
    accuracy: float = 0.85,
    *,
    seed: int = 0,
    model: str = "claude-3-7-sonnet-20250219",
    with_description: bool | tuple[bool, ...] | list[bool] = True,
    files: int = 1,
    second_file_fraction: float = 0.3,
    defects: bool = True,
) -> list[Path]:
    """Write teacher-response CSVs for the benchmark parquet at ``benchmark_path``.

    Format of ConnectomeBench's ``segmentation_classification.py``: header
    ``proofread root id, current root id, species, xmin..zmax, unit, index, analysis,
    llm_answer, model, with_description, prompt``; K rows per benchmark row (``index``
    0..K-1); ids as exact integer text; coordinates printed as float32 (so they differ from
    the parquet's float64 in the last digits); ``prompt`` is the ``repr`` of a list of
    content blocks (three base64 PNG image blocks, then a text block).

    Each benchmark row gets a difficulty ``p ~ Beta(accuracy, 1 - accuracy)`` (mean
    ``accuracy``; ``accuracy`` 0 or 1 gives a constant), and each of its K responses is
    right with probability ``p``, so many segments are always right and a few never. A
    wrong response picks a plausible other letter (a<->c, a<->b, d<->e, ...), mostly the
    segment's own usual confusion. ``analysis`` describes the answered letter (one of
    ``ANALYSIS_PHRASES``), right or wrong.

    With ``defects=True`` about 21% of answers are written oddly but still name the letter
    (``"A"``, ``"a)"``, ``"(a)"``, ``" a "``, ``"**a**"``, ``"c) Processes without a..."``,
    ``"D. A nucleus"`` in the prompt's wording, ``"Nucleus"`` alone), 4% keep a valid letter
    but lost their analysis tags (``analysis`` is the placeholder), and 30% of the wrong
    responses are unparseable (tags missing: placeholder analysis and an empty or garbage
    answer; or an ambiguous ``"a or b"``). So the answer rule's accuracy is exactly the
    accuracy that was drawn.

    ``with_description`` is one flag for all files or one per file; a file written without
    the guidance paragraph is named ``..._without_description.csv``, as the benchmark's own.

    ``files=2`` adds ``..._K{k}_v2.csv`` (``files=3`` also ``_v3``, ...) with fresh responses
    for a random ``second_file_fraction`` of the rows. Duplicate benchmark rows get their
    own K responses each, like the real script looping over the dataset. Random streams
    are separate, so responses do not depend on whether the benchmark has images.

    Measured with the defaults (seed 0; ``scoring.parse_answer``, unparsed = wrong;
    majority = ``scoring.majority_vote`` over the K responses, none parsed = wrong):

    ====== ================= ============== ===================== ========
    n      response accuracy majority vote  last response only    unparsed
    ====== ================= ============== ===================== ========
    400    0.8385            0.8875         0.8375                4.55%
    2000   0.8502            0.8905         0.8580                4.49%
    ====== ================= ============== ===================== ========

    Returns the paths written, first file first.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be between 0 and 1, got {accuracy}")
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    table = pq.read_table(benchmark_path)
    names = table.column_names
    label_col = next((c for c in ("class_description", "ground_truth") if c in names), None)
    if label_col is None:
        raise ValueError(f"{benchmark_path}: no class_description/ground_truth column")
    image_cols = next(
        (cols for cols in IMAGE_COLUMN_STYLES.values() if all(c in names for c in cols)), None
    )
    n = table.num_rows
    pids = table.column("proofread_root_id").to_pylist()
    cids = table.column("current_root_id").to_pylist()
    species = table.column("species").to_pylist()
    boxes = {
        c: table.column(c).to_numpy() for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")
    }
    truth = [DESCRIPTION_TO_LETTER[s] for s in table.column(label_col).to_pylist()]
    images = None
    if image_cols is not None:
        images = [[cell["bytes"] for cell in table.column(c).to_pylist()] for c in image_cols]

    rng = np.random.default_rng([seed, 2])
    if 0.0 < accuracy < 1.0:
        difficulty = rng.beta(accuracy, 1.0 - accuracy, size=n)
    else:  # a perfect (or perfectly wrong) teacher
        difficulty = np.full(n, accuracy)
    usual_mistake = [_confusion(t, rng) for t in truth]

    def rows_for(indices, rng, fake_rng, with_description: bool) -> list[dict]:
        out = []
        for r in indices:
            box_strs = [str(np.float32(boxes[c][r])) for c in boxes]
            text = teacher_prompt_text(species[r], _size_of(box_strs), with_description)
            views = None if images is None else [images[v][r] for v in range(len(VIEWS))]
            prompt = _prompt_literal(views, text, fake_rng)
            for idx in range(k):
                analysis, answer = _one_response(
                    truth[r], rng.random() < difficulty[r], usual_mistake[r], defects, rng
                )
                out.append(
                    {
                        "proofread root id": str(pids[r]),
                        "current root id": str(cids[r]),
                        "species": species[r],
                        **dict(zip(boxes, box_strs, strict=True)),
                        "unit": "nm",
                        "index": idx,
                        "analysis": analysis,
                        "llm_answer": answer,
                        "model": model,
                        "with_description": with_description,
                        "prompt": prompt,
                    }
                )
        return out

    out_dir = Path(out_dir)
    plan = [("", list(range(n)))]
    m = min(n, max(1, round(second_file_fraction * n)))
    for f in range(1, files):
        subset = np.random.default_rng([seed, 3, f]).choice(n, size=m, replace=False)
        plan.append((f"_v{f + 1}", sorted(subset.tolist())))
    flags = [with_description] * files if isinstance(with_description, bool) else list(with_description)
    if len(flags) != files:
        raise ValueError(f"with_description has {len(flags)} values for {files} files")
    paths = []
    for f, (suffix, indices) in enumerate(plan):
        if not flags[f]:  # the benchmark script's naming for files written without guidance
            suffix += "_without_description"
        rows = rows_for(
            indices, np.random.default_rng([seed, 4, f]), np.random.default_rng([seed, 5, f]), flags[f]
        )
        frame = pd.DataFrame(rows, columns=list(_CSV_COLUMNS))
        path = out_dir / _TEACHER_FILE.format(model=model, k=k, suffix=suffix)
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        paths.append(path)
    return paths
