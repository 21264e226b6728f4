"""A ConnectomeBench-like benchmark parquet, made offline.

``make_benchmark`` writes a table shaped like the Hugging Face dataset
``jeffbbrown2/ConnectomeBench`` (configuration "MICrONS, Segment Classification"):
18-digit int64 root ids shared by several segments of one neuron, a float64 bounding box
in nm, the exact ground-truth strings, and three rendered views per segment stored as
``struct<bytes, path>`` with the ``huggingface`` schema metadata, so ``datasets`` decodes
them as PIL images. Each class has its own look, visible in every view, so that a tiny
vision model can learn it. The teacher's answers to it are written by ``teacher.py``.

Only numpy, PIL and pyarrow are used; ``datasets`` is imported lazily.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..core.data import atomic_path
from ..core.task import CLASSES, IMAGE_COLUMN_STYLES, VIEWS

__all__ = ["CLASS_FREQUENCIES", "make_benchmark"]

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
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _hf_features_json(schema, image_cols) -> str:
    """The ``huggingface`` metadata value: datasets features with ``Image`` for the views."""
    import datasets

    base = datasets.Features.from_arrow_schema(schema)
    feats = datasets.Features(
        {c: (datasets.Image() if c in image_cols else base[c]) for c in schema.names}
    )
    return json.dumps({"info": {"features": feats.to_dict()}})
