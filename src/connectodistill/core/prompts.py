"""The teacher's question: which prompt text each sample is given, and where it came from.

The student learns, and every model is scored, on the prompt the teacher answered. Three
sources, in order of preference (``prompt_source`` in every prediction):

- ``teacher``: the exact text stored in the teacher CSV for this sample (decoded by merge
  into ``teacher_prompt``), with the views where the teacher's content blocks put them;
- ``teacher-template``: for a sample without a stored prompt (no teacher response, a new
  segment), the teacher's prompt recovered as a template (``recover_templates``) and
  rendered with the sample's species and bounding-box size;
- ``builtin``: the project's own prompt (``conversation.build_prompt``), only when there is
  no teacher prompt at all, or when asked for (``--prompt builtin``).

Choice rule when a sample's responses carry different prompts (files written with and
without the species guidance): the run's *prompt setting* decides (``with_description``
true/false); within it, the prompt of the sample's first response in input order.
``choose_setting`` picks the setting: the one asked for, else the one most training rows
carry (ties: with guidance).

The template keeps the teacher's text byte for byte: only the species and the box size (as
the teacher printed them: ``maxpt - minpt`` in float64, numpy's default formatting, joined
by `` x ``) become placeholders, and a template is kept only if it reproduces every stored
prompt of its (species, setting) exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PROMPT_SOURCES",
    "SamplePrompt",
    "choose_setting",
    "prompt_sha256",
    "recover_templates",
    "render_template",
    "sample_prompts",
    "setting_name",
    "size_text",
]

PROMPT_SOURCES = ("teacher", "teacher-template", "builtin")
SIZE_FIELD, SPECIES_FIELD = "{bbox_size}", "{species}"


def prompt_sha256(text: str) -> str:
    """sha256 of the exact UTF-8 prompt text the model was given."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def size_text(box: Sequence[float]) -> str:
    """The box size as the teacher printed it: ``dx x dy x dz`` (float64, numpy formatting).

    ``box`` is (xmin, ymin, zmin, xmax, ymax, zmax).
    """
    lo = np.asarray(box[:3], dtype=np.float64)
    hi = np.asarray(box[3:6], dtype=np.float64)
    return " x ".join(str(v) for v in (hi - lo))


def setting_name(with_description: object) -> str:
    """``with_description`` / ``without_description`` / ``unknown`` (the CSV had no flag)."""
    if with_description is None or (isinstance(with_description, float) and np.isnan(with_description)):
        return "unknown"
    return "with_description" if bool(with_description) else "without_description"


def _template_key(species: object, setting: str) -> str:
    return f"{species}|{setting}"


def render_template(template: str, species: str, size: str) -> str:
    """The prompt text of a recovered template for one sample (plain replacement, no format)."""
    return template.replace(SPECIES_FIELD, str(species)).replace(SIZE_FIELD, size)


def _as_template(text: str, species: str, size: str) -> str | None:
    """``text`` with the size (exactly once) and the species as placeholders; None if it cannot."""
    if text.count(size) != 1 or SIZE_FIELD in text or SPECIES_FIELD in text:
        return None
    out = text.replace(size, SIZE_FIELD)
    return out.replace(str(species), SPECIES_FIELD) if species else out


def recover_templates(records: Iterable[tuple]) -> dict[str, dict]:
    """Templates per (species, setting) from (text, species, size text, setting, layout[, rows])
    records (``rows``: how many responses the record stands for, 1 if left out).

    Returns ``{"<species>|<setting>": {species, setting, template or None, layout (the most
    frequent over the responses), prompts (distinct texts), reproduced (how many of them the
    template renders byte for byte), reason}}``. A group keeps its template only when every
    stored prompt is reproduced exactly.
    """
    groups: dict[str, dict[tuple[str, str], None]] = {}
    meta: dict[str, tuple[str, str]] = {}
    layouts: dict[str, dict[str | None, int]] = {}
    for text, species, size, setting, layout, *rows in records:
        if text is None:
            continue
        key = _template_key(species, setting)
        groups.setdefault(key, {})[(text, size)] = None
        meta[key] = (species, setting)
        counts = layouts.setdefault(key, {})
        counts[layout] = counts.get(layout, 0) + (rows[0] if rows else 1)
    out: dict[str, dict] = {}
    for key, items in groups.items():
        species, setting = meta[key]
        candidates = {_as_template(text, species, size) for text, size in items}
        template, reason = None, None
        if None in candidates:
            reason = "the box size does not appear exactly once in some stored prompts"
        elif len(candidates) > 1:
            reason = f"stored prompts differ beyond species and box size ({len(candidates)} variants)"
        else:
            template = candidates.pop()
        reproduced = sum(render_template(template, species, size) == text for text, size in items) if template else 0
        if template is not None and reproduced != len(items):
            template, reason = None, f"the template reproduces only {reproduced} of {len(items)} stored prompts"
        out[key] = {"species": species, "setting": setting, "template": template,
                    "layout": max(layouts[key], key=layouts[key].__getitem__),
                    "prompts": len(items), "reproduced": reproduced if template else 0, "reason": reason}
    return out


def choose_setting(settings: Sequence[object], asked: bool | None = None) -> tuple[str, dict[str, int]]:
    """(setting name, counts per setting name) for rows carrying these ``with_description`` values.

    ``asked`` (True/False) wins; else the most frequent setting; ties go to with guidance.
    """
    counts: dict[str, int] = {}
    for s in settings:
        name = setting_name(s)
        counts[name] = counts.get(name, 0) + 1
    if asked is not None:
        return setting_name(asked), counts
    if not counts:
        return "with_description", counts
    order = ("with_description", "without_description", "unknown")
    return max(order, key=lambda name: (counts.get(name, 0), -order.index(name))), counts


@dataclass(frozen=True)
class SamplePrompt:
    """The prompt one sample is given: its text, source, and content-block layout."""

    text: str
    source: str  # one of PROMPT_SOURCES
    layout: str | None = None  # e.g. "image,image,image,text"; None = views first, then text

    @property
    def sha256(self) -> str:
        return prompt_sha256(self.text)


def sample_prompts(
    samples: Sequence[Mapping],
    stored: Mapping[tuple[int, int], tuple[str, str | None]],
    templates: Mapping[str, dict],
    setting: str,
    builtin,
) -> list[SamplePrompt]:
    """One ``SamplePrompt`` per sample: stored teacher text, else its template, else builtin.

    ``samples`` are benchmark rows (ids, species, box columns); ``stored`` maps a sample's
    ids to (text, layout) of its first stored prompt in ``setting``; ``builtin(row)`` renders
    the project's own prompt.
    """
    from .task import BBOX_COLUMNS, ID_COLUMNS

    out = []
    for row in samples:
        key = (int(row[ID_COLUMNS[0]]), int(row[ID_COLUMNS[1]]))
        if key in stored:
            text, layout = stored[key]
            out.append(SamplePrompt(text, "teacher", layout))
            continue
        species = row.get("species")
        tmpl = templates.get(_template_key(species, setting), {}).get("template")
        if tmpl:
            size = size_text([float(row[c]) for c in BBOX_COLUMNS])
            out.append(SamplePrompt(render_template(tmpl, species, size), "teacher-template",
                                    templates[_template_key(species, setting)].get("layout")))
        else:
            out.append(SamplePrompt(builtin(row), "builtin", None))
    return out


def first_stored(responses, setting: str) -> tuple[dict[tuple[int, int], tuple[str, str | None]], int]:
    """(ids -> (text, layout) of the first stored prompt in ``setting``, samples with >1 text).

    ``responses``: a pandas frame of merge's responses file (ids, ``teacher_prompt``,
    ``teacher_prompt_layout``, ``teacher_with_description``, ``teacher_order``).
    """
    from .task import ID_COLUMNS

    if responses is None or len(responses) == 0 or "teacher_prompt" not in responses:
        return {}, 0
    r = responses[responses["teacher_prompt"].notna()]
    r = r[[setting_name(v) == setting for v in r["teacher_with_description"]]]
    if "teacher_order" in r:
        r = r.sort_values("teacher_order", kind="stable")
    stored: dict[tuple[int, int], tuple[str, str | None]] = {}
    texts: dict[tuple[int, int], set] = {}
    layout_col = r["teacher_prompt_layout"] if "teacher_prompt_layout" in r else [None] * len(r)
    for p, c, text, layout in zip(r[ID_COLUMNS[0]], r[ID_COLUMNS[1]], r["teacher_prompt"], layout_col,
                                  strict=True):
        key = (int(p), int(c))
        stored.setdefault(key, (text, layout if isinstance(layout, str) else None))
        texts.setdefault(key, set()).add(text)
    return stored, sum(len(v) > 1 for v in texts.values())
