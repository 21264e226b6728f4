"""A ConnectomeBench-like benchmark parquet and teacher-response CSVs, made offline.

``make_benchmark`` writes a table shaped like the Hugging Face dataset
``jeffbbrown2/ConnectomeBench`` (configuration "MICrONS, Segment Classification"):
18-digit int64 root ids shared by several segments of one neuron, a float64 bounding box
in nm, the exact ground-truth strings, and three rendered views per segment stored as
``struct<bytes, path>`` with the ``huggingface`` schema metadata, so ``datasets`` decodes
them as PIL images. Each class has its own look, visible in every view, so that a tiny
vision model can learn it.

``make_teacher_csvs`` writes the teacher's answers in the format of ConnectomeBench's
``segmentation_classification.py``: K rows per segment, spaced header names, float32-printed
coordinates, the prompt as a Python literal of content blocks, and the small defects real
answers carry (upper case, brackets, missing tags, ambiguous answers).

Only numpy, PIL, pyarrow and pandas are used; ``datasets`` is imported lazily.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np

from ..task import (
    CLASSES,
    DESCRIPTION_TO_LETTER,
    IMAGE_COLUMN_STYLES,
    LETTERS,
    MISSING_ANALYSIS,
    VIEWS,
)

__all__ = ["ANALYSIS_DETAIL", "ANALYSIS_PHRASES", "CLASS_FREQUENCIES", "PROMPT_OPTIONS", "make_benchmark",
           "make_teacher_csvs", "teacher_prompt_text"]

# Class frequencies, roughly those of the real MICrONS segment-classification task.
CLASS_FREQUENCIES: dict[str, float] = {
    "a": 0.42,
    "c": 0.24,
    "e": 0.10,
    "b": 0.09,
    "d": 0.09,
    "f": 0.03,
    "g": 0.03,
}

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


# --------------------------------------------------------------------------------------
# geometry: a random 3D-ish object per class, projected into three views
# --------------------------------------------------------------------------------------


def _direction(rng: np.random.Generator, max_component: float = 0.85) -> np.ndarray:
    """A random unit vector with no dominant axis, so it stays long in every projection."""
    while True:
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        if np.abs(v).max() <= max_component:
            return v


def _polyline(rng, start, direction, length, segments, wiggle) -> np.ndarray:
    """A wiggly 3D polyline of ``segments`` pieces from ``start`` along ``direction``."""
    pts = [np.asarray(start, dtype=float)]
    d = np.asarray(direction, dtype=float)
    step = length / segments
    for _ in range(segments):
        d = d + rng.normal(scale=wiggle, size=3)
        d /= np.linalg.norm(d)
        pts.append(pts[-1] + d * step)
    return np.array(pts)


def _process_tree(rng, start, direction, length, branch_p=0.5) -> list[np.ndarray]:
    """A process with an optional side branch."""
    main = _polyline(rng, start, direction, length, int(rng.integers(2, 4)), 0.35)
    lines = [main]
    if rng.random() < branch_p:
        i = int(rng.integers(1, len(main) - 1)) if len(main) > 2 else 1
        bd = _direction(rng, 0.9) * 0.6 + direction * 0.4
        bd /= np.linalg.norm(bd)
        lines.append(_polyline(rng, main[i], bd, length * rng.uniform(0.3, 0.6), 2, 0.3))
    return lines


def _make_object(letter: str, rng: np.random.Generator) -> dict:
    """Primitives of one segment in unit coordinates (roughly inside [-1, 1]^3)."""
    disks: list[tuple[np.ndarray, float]] = []  # (center, radius)
    lines: list[np.ndarray] = []  # polylines, thin
    tubes: list[np.ndarray] = []  # polylines, thick
    blobs: list[tuple[np.ndarray, float, np.ndarray]] = []  # (center, radius, radius profile)
    squares: list[tuple[np.ndarray, float]] = []  # (center, half side)
    smears: list[tuple[np.ndarray, float, float]] = []  # (center, rx, ry)
    if letter == "a":
        c = rng.uniform(-0.2, 0.2, size=3)
        disks.append((c, rng.uniform(0.22, 0.32)))
        for _ in range(int(rng.integers(2, 6))):
            lines += _process_tree(rng, c, _direction(rng), rng.uniform(0.8, 1.2), 0.4)
    elif letter == "b":
        u = _direction(rng, 0.75)
        while np.abs(u).min() < 0.3:
            u = _direction(rng, 0.75)
        s = rng.uniform(0.5, 0.6)
        centers = [-s * u, s * u]
        if rng.random() < 0.3:  # a third soma, off the line between the two
            w = np.cross(u, _direction(rng))
            w /= np.linalg.norm(w)
            centers.append(w * 0.5)
        for c in centers:
            disks.append((c, rng.uniform(0.15, 0.21)))
            for _ in range(int(rng.integers(1, 3))):
                lines += _process_tree(rng, c, _direction(rng), rng.uniform(0.3, 0.5), 0.2)
    elif letter == "c":
        start = rng.uniform(-0.5, 0.5, size=3)
        for _ in range(int(rng.integers(2, 4))):
            d = _direction(rng)
            lines += _process_tree(rng, start, d, rng.uniform(0.8, 1.2), 0.8)
        if rng.random() < 0.5:  # a separate stray neurite
            lines += _process_tree(rng, rng.uniform(-0.6, 0.6, size=3), _direction(rng), 0.6, 0.5)
    elif letter == "d":
        disks.append((rng.uniform(-0.4, 0.4, size=3), rng.uniform(0.12, 0.17)))
    elif letter == "e":
        if rng.random() < 0.5:  # glia: an irregular jagged mass
            m = int(rng.integers(9, 15))
            blobs.append(
                (
                    rng.uniform(-0.2, 0.2, size=3),
                    rng.uniform(0.35, 0.55),
                    rng.uniform(0.45, 1.0, size=m),
                )
            )
        else:  # blood vessel: a thick tube across the volume
            d = _direction(rng, 0.8)
            start = -d * rng.uniform(0.7, 0.9) + rng.uniform(-0.15, 0.15, size=3)
            tubes.append(_polyline(rng, start, d, rng.uniform(1.4, 1.8), 3, 0.25))
    elif letter == "f":
        for _ in range(int(rng.integers(8, 20))):
            squares.append((rng.uniform(-0.85, 0.85, size=3), rng.uniform(0.04, 0.08)))
    elif letter == "g":
        for _ in range(int(rng.integers(1, 4))):
            smears.append(
                (rng.uniform(-0.4, 0.4, size=3), rng.uniform(0.25, 0.6), rng.uniform(0.15, 0.4))
            )
    else:  # pragma: no cover - letters come from task.LETTERS
        raise ValueError(letter)
    return {
        "disks": disks,
        "lines": lines,
        "tubes": tubes,
        "blobs": blobs,
        "squares": squares,
        "smears": smears,
    }


# front looks along z (x right, y down), side along x (z right), top along y (x right, z down)
_AXES = {"front": (0, 1), "side": (2, 1), "top": (0, 2)}


def _render_view(obj: dict, letter: str, view: str, size: int, rng, colors) -> bytes:
    """Draw one view of ``obj`` and return PNG bytes."""
    from PIL import Image, ImageDraw, ImageFilter

    bg, fg = colors
    i, j = _AXES[view]
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shift = rng.uniform(-0.06, 0.06, size=2)
    half = size / 2.0
    scale = size * 0.45 * rng.uniform(0.92, 1.05)

    def px(points: np.ndarray) -> np.ndarray:
        p2 = np.atleast_2d(points)[:, [i, j]] @ rot.T + shift
        return half + p2 * scale

    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    line_w = max(2, round(size * rng.uniform(0.035, 0.05)))
    for pts in obj["tubes"]:
        w = max(4, round(size * rng.uniform(0.13, 0.2)))
        xy = [tuple(p) for p in px(pts)]
        draw.line(xy, fill=fg, width=w, joint="curve")
        for x, y in (xy[0], xy[-1]):
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=fg)
    for pts in obj["lines"]:
        draw.line([tuple(p) for p in px(pts)], fill=fg, width=line_w, joint="curve")
    for c, r in obj["disks"]:
        (x, y), rp = px(c)[0], r * scale
        draw.ellipse((x - rp, y - rp, x + rp, y + rp), fill=fg)
    for c, r, prof in obj["blobs"]:
        (x, y) = px(c)[0]
        m = len(prof)
        jitter = np.clip(prof + rng.normal(scale=0.08, size=m), 0.35, 1.1)
        ang = np.linspace(0, 2 * np.pi, m, endpoint=False) + theta
        poly = [
            (x + r * scale * a * np.cos(t), y + r * scale * a * np.sin(t))
            for a, t in zip(jitter, ang, strict=True)
        ]
        draw.polygon(poly, fill=fg)
    for c, h in obj["squares"]:
        (x, y), hp = px(c)[0], max(1.5, h * scale)
        draw.rectangle((x - hp, y - hp, x + hp, y + hp), fill=fg)
    if obj["smears"]:
        for c, rx, ry in obj["smears"]:
            (x, y) = px(c)[0]
            draw.ellipse((x - rx * scale, y - ry * scale, x + rx * scale, y + ry * scale), fill=fg)
        img = img.filter(ImageFilter.GaussianBlur(radius=size / 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _colors(letter: str, rng) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(background, foreground): dark shape on a light background; faint for `g`."""
    bg_level = int(rng.integers(228, 252))
    bg = tuple(int(np.clip(bg_level + rng.integers(-4, 5), 0, 255)) for _ in range(3))
    if letter == "g":
        drop = int(rng.integers(14, 30))
        fg = tuple(max(0, b - drop) for b in bg)
    else:
        level = int(rng.integers(25, 85))
        fg = tuple(int(np.clip(level + rng.integers(-18, 19), 0, 255)) for _ in range(3))
    return bg, fg


def _render_sample(letter: str, size: int, rng) -> tuple[bytes, bytes, bytes]:
    obj = _make_object(letter, rng)
    colors = _colors(letter, rng)
    return tuple(_render_view(obj, letter, v, size, rng, colors) for v in VIEWS)


# --------------------------------------------------------------------------------------
# the benchmark table
# --------------------------------------------------------------------------------------

# Box extents (nm) by class: somas are large, nuclei small, fragments tiny.
_EXTENT_NM = {
    "a": (4e4, 1.2e5),
    "b": (8e4, 2e5),
    "c": (1e4, 1.5e5),
    "d": (5e3, 1.2e4),
    "e": (1e4, 8e4),
    "f": (1e3, 2e4),
    "g": (1e3, 3e4),
}


def _class_counts(n: int) -> dict[str, int]:
    """Largest-remainder quotas of CLASS_FREQUENCIES, every class >= 1 once n >= 50."""
    raw = {k: p * n for k, p in CLASS_FREQUENCIES.items()}
    counts = {k: int(v) for k, v in raw.items()}
    rest = n - sum(counts.values())
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:rest]:
        counts[k] += 1
    if n >= 50:
        for k in counts:
            if counts[k] == 0:
                counts[k] = 1
                counts["a"] -= 1
    return counts


def _not_float_exact(x: int) -> int:
    """Nudge an id so float64 cannot hold it (spacing there is 128, so +1 suffices)."""
    return x + 1 if int(float(x)) == x else x


def _root_ids(rng, n: int, base: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        x = _not_float_exact(base + int(rng.integers(0, 10**10)))
        if x not in taken:
            taken.add(x)
            out.append(x)
    return out


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` then rename tmp onto ``path``, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def make_benchmark(
    path,
    n: int = 400,
    *,
    seed: int = 0,
    image_size: int = 64,
    column_style: str = "new",
    species: str = "mouse",
    with_images: bool = True,
    duplicates: int = 0,
) -> Path:
    """Write a ConnectomeBench-like segment-classification parquet at ``path``.

    Columns, in order: ``species``, ``proofread_root_id``, ``current_root_id`` (int64,
    18 digits, never exactly representable as float64), ``xmin ymin zmin xmax ymax zmax``
    (float64, nm), the label (``class_description`` for ``column_style="new"``,
    ``ground_truth`` for ``"old"``) with the exact strings of ``task.CLASSES``, the three
    views (``task.IMAGE_COLUMN_STYLES[column_style]``, PNG ``struct<bytes, path>``; omitted
    when ``with_images=False``) and a pass-through ``option_1_neuron_id`` (string).

    Segments are grouped by neuron (1-4 rows per ``proofread_root_id``, unique
    ``current_root_id``); classes follow ``CLASS_FREQUENCIES`` (exact quotas, shuffled).
    ``duplicates=k`` appends k exact copies of existing rows. Deterministic in ``seed``.
    The ``huggingface`` schema metadata makes ``datasets`` decode the views as PIL images.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if column_style not in IMAGE_COLUMN_STYLES:
        raise ValueError(
            f"column_style must be one of {sorted(IMAGE_COLUMN_STYLES)}, got {column_style!r}"
        )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    path = Path(path)
    rng = np.random.default_rng(seed)

    counts = _class_counts(n)
    letters = np.array([k for k, c in counts.items() for _ in range(c)])
    rng.shuffle(letters)

    # neurons: groups of 1-4 consecutive rows share a proofread id
    taken: set[int] = set()
    group_sizes: list[int] = []
    while sum(group_sizes) < n:
        group_sizes.append(int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15])))
    group_sizes[-1] -= sum(group_sizes) - n
    neurons = _root_ids(rng, len(group_sizes), 864691134000000000, taken)
    proofread = [pid for pid, g in zip(neurons, group_sizes, strict=True) for _ in range(g)]
    current = _root_ids(rng, n, 864691135000000000, taken)

    lo = np.column_stack([rng.uniform(1.5e5, 8.0e5, n) for _ in range(3)])
    ext = np.array([[rng.uniform(*_EXTENT_NM[str(le)]) for _ in range(3)] for le in letters])
    box = np.hstack([lo, lo + ext])

    label_col = "class_description" if column_style == "new" else "ground_truth"
    columns: dict[str, list] = {
        "species": [species] * n,
        "proofread_root_id": proofread,
        "current_root_id": current,
        **{
            name: box[:, k].tolist()
            for k, name in enumerate(("xmin", "ymin", "zmin", "xmax", "ymax", "zmax"))
        },
        label_col: [CLASSES[str(le)] for le in letters],
    }
    image_cols = IMAGE_COLUMN_STYLES[column_style]
    if with_images:
        img_rng = np.random.default_rng([seed, 1])
        views = [_render_sample(str(le), image_size, img_rng) for le in letters]
        for v, (col, view) in enumerate(zip(image_cols, VIEWS, strict=True)):
            columns[col] = [
                {"bytes": s[v], "path": f"{view}_{r:05d}.png"} for r, s in enumerate(views)
            ]
    columns["option_1_neuron_id"] = [str(c) for c in current]

    if duplicates:
        picks = rng.choice(n, size=duplicates, replace=duplicates > n).tolist()
        for col in columns.values():
            col.extend([col[p] for p in picks])

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    types = {
        "species": pa.string(),
        "proofread_root_id": pa.int64(),
        "current_root_id": pa.int64(),
        **{c: pa.float64() for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")},
        label_col: pa.string(),
        "option_1_neuron_id": pa.string(),
        **{c: image_type for c in image_cols},
    }
    schema = pa.schema([(c, types[c]) for c in columns])
    table = pa.table({c: pa.array(v, type=types[c]) for c, v in columns.items()}, schema=schema)
    table = table.replace_schema_metadata({"huggingface": _hf_features_json(schema, image_cols)})
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def _hf_features_json(schema, image_cols) -> str:
    """The ``huggingface`` metadata value: datasets features with ``Image`` for the views."""
    import datasets

    base = datasets.Features.from_arrow_schema(schema)
    feats = datasets.Features(
        {c: (datasets.Image() if c in image_cols else base[c]) for c in schema.names}
    )
    return json.dumps({"info": {"features": feats.to_dict()}})


# --------------------------------------------------------------------------------------
# the teacher CSVs
# --------------------------------------------------------------------------------------

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
    from ..prompts import size_text

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
        _atomic_write(path, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
        paths.append(path)
    return paths
