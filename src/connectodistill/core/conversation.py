"""From a prompt and a benchmark row to a chat conversation: the same builder at train and eval.

The user turn is the three views (front, side, top) and the prompt text, in the order of the
teacher's content blocks (``layout``, by default the views first); the assistant turn is
``<analysis>…</analysis>`` then ``<answer>letter</answer>``.

Which prompt text a sample gets is decided in ``prompts.py``: by default the teacher's own.
The template here (``build_prompt``, id ``PROMPT_TEMPLATE_ID``) is the project's *builtin*
prompt, used only where no teacher prompt exists or with ``--prompt builtin``. It is the
project's own wording: nothing in it is the teacher's question.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError
from .task import BBOX_COLUMNS, CLASSES, VIEWS

PROMPT_TEMPLATE_ID = "segment-classification-v1"

_OPTIONS = "\n".join(f"{letter}) {desc}" for letter, desc in CLASSES.items())

PROMPT_TEMPLATE = """You are an expert in connectomics proofreading. The three images show front, side and top views of one 3D segment from an electron-microscopy reconstruction of the {species} brain.
The segment's bounding box measures {dx:.0f} x {dy:.0f} x {dz:.0f} nm.
{guidance}Which of these best describes the segment?
{options}

Describe what you see inside <analysis></analysis> tags, then give only the letter of your choice inside <answer></answer> tags."""

# Species guidance of the builtin prompt (the project's own sentences, not the teacher's).
GUIDANCE = {
    "mouse": (
        "In the mouse visual cortex, a soma is a large round cell body (about 10-20 um) from "
        "which dendrites and an axon extend; a nucleus alone is a smaller smooth round object; "
        "glia and blood vessels look irregular, sheet-like or tubular.\n"
    ),
    "fly": (
        "In the fly brain, somas sit at the rind and are small and round; neurites are thin "
        "branching processes; glia wrap around neuropil in irregular sheets.\n"
    ),
}
_DEFAULT_GUIDANCE = (
    "A soma is a large round cell body with processes extending from it; a nucleus alone is a "
    "smaller smooth round object; glia and blood vessels look irregular or tubular.\n"
)

SIMPLE_PROMPT = "What is shown? Answer with one letter a-g inside <answer></answer> tags."

# Used only when a row has no teacher analysis and the user asked to fill it, or for
# --target ground-truth (the original scripts' synthetic mode).
TEMPLATED_RATIONALE = {
    "a": "The segment shows a single soma with processes extending from it.",
    "b": "The segment shows more than one soma, so several cells are merged.",
    "c": "The segment shows only processes and no soma.",
    "d": "The segment is a small smooth round object, a nucleus.",
    "e": "The segment has an irregular non-neuronal shape, such as glia or a blood vessel.",
    "f": "The segment matches none of the listed types.",
    "g": "The segment is too ambiguous to classify with confidence.",
}


def prompt_template_hash() -> str:
    """Hash of everything that shapes the prompt text; recorded with every run and result."""
    parts = [PROMPT_TEMPLATE, _OPTIONS, SIMPLE_PROMPT, repr(sorted(GUIDANCE.items())), _DEFAULT_GUIDANCE]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def build_prompt(row: Mapping[str, Any], *, with_description: bool = True, simple: bool = False) -> str:
    """The task prompt for one benchmark row (species, bounding-box size, the seven options)."""
    if simple:
        return SIMPLE_PROMPT
    species = str(row.get("species") or "mouse")
    try:
        xmin, ymin, zmin, xmax, ymax, zmax = (float(row[c]) for c in BBOX_COLUMNS)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"sample {sample_name(row)}: bounding box columns missing or not numbers") from e
    guidance = GUIDANCE.get(species.lower(), _DEFAULT_GUIDANCE) if with_description else ""
    return PROMPT_TEMPLATE.format(
        species=species, dx=xmax - xmin, dy=ymax - ymin, dz=zmax - zmin,
        guidance=guidance, options=_OPTIONS,
    )


def target_text(letter: str, analysis: str | None) -> str:
    """The assistant turn: the analysis, then the answer letter."""
    analysis = analysis if analysis else TEMPLATED_RATIONALE[letter]
    return f"<analysis>{analysis.strip()}</analysis>\n<answer>{letter}</answer>"


def build_messages(prompt: str, target: str | None = None, n_images: int = len(VIEWS),
                   layout: str | None = None) -> list[dict]:
    """Chat messages: the user turn holds the images and the prompt in ``layout`` order
    (e.g. ``"image,image,image,text"``; None: images first), the assistant turn ``target``."""
    content = _user_content(prompt, n_images, layout)
    messages = [{"role": "user", "content": content}]
    if target is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages


def _user_content(prompt: str, n_images: int, layout: str | None) -> list[dict]:
    kinds = layout.split(",") if layout else []
    if kinds.count("image") != n_images or kinds.count("text") != 1:  # not this sample's shape
        kinds = ["image"] * n_images + ["text"]
    return [{"type": "text", "text": prompt} if k == "text" else {"type": "image"} for k in kinds]


def sample_name(row: Mapping[str, Any]) -> str:
    return f"{row.get('proofread_root_id')}/{row.get('current_root_id')}"


def load_image(value: Any, *, where: str = "?"):
    """A PIL RGB image from PIL, bytes, a ``{bytes, path}`` struct or a file path."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return load_image(bytes(value["bytes"]), where=where)
        if value.get("path"):
            return load_image(value["path"], where=where)
        raise UserError(f"sample {where}: image struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value))).convert("RGB")
    if isinstance(value, (str, Path)) and str(value):
        if not Path(value).is_file():
            raise UserError(f"sample {where}: image file not found: {value}")
        return Image.open(value).convert("RGB")
    raise UserError(f"sample {where}: missing image (got {type(value).__name__})")


def load_images(row: Mapping[str, Any], image_columns: tuple[str, ...], *, blank: bool = False) -> list:
    """The three views of a row, in prompt order; ``blank`` swaps them for grey images."""
    from PIL import Image

    where = sample_name(row)
    images = [load_image(row.get(col), where=f"{where} column {col}") for col in image_columns]
    if blank:  # same size, no content: the sanity ablation
        images = [Image.new("RGB", im.size, (128, 128, 128)) for im in images]
    return images


def tokenizer_corpus() -> list[str]:
    """Text a tiny offline tokenizer should know: every prompt variant and the answer format."""
    row = {"species": "mouse", **{c: 0.0 for c in BBOX_COLUMNS}}
    texts = [PROMPT_TEMPLATE, SIMPLE_PROMPT, _OPTIONS, _DEFAULT_GUIDANCE, *GUIDANCE.values()]
    for species in ("mouse", "fly", "human"):
        for guidance in (True, False):
            texts.append(build_prompt({**row, "species": species}, with_description=guidance))
    texts += [target_text(letter, None) for letter in CLASSES]
    texts += [f"<answer>{x}</answer>" for x in CLASSES] + [f"{n} x {n} x {n} nm" for n in range(0, 10000, 37)]
    return texts
