"""The run's temperatures, fit on its val split when training ends (``calibration.json``).

A student's letter distribution is overconfident (a rationale has committed to the letter
before it is read; a small model on little data). Temperature scaling fits one scalar per
answer mode on held-out val samples, never test (``core.calibration.fit_temperature``):

- ``generate``: the distribution at the answer position after the student's own greedy
  rationale (what ``eval`` and ``predict`` read by default);
- ``one_pass``: the distribution right after the question and an opened answer block
  (``--one-pass``).

``eval``, ``report``, ``predict`` and the exported model card read the file; a run trained
before it existed is fit at eval time on its val split, and the result says so.
"""

from __future__ import annotations

import json
from pathlib import Path

CALIBRATION = "calibration.json"
MODES = ("generate", "one_pass")


def val_letter_probabilities(model, processor, examples, image_cols, *, mode: str, batch_size: int,
                             max_new_tokens: int):
    """(letter distributions (n, 7), the letters answered) of ``examples`` in answer ``mode``."""
    from ..core.conversation import load_images
    from ..core.generation import generate_answers, letter_probabilities, one_pass_probabilities
    from ..core.scoring import option_descriptions, parse_response
    from ..core.task import LETTERS

    prompts = [ex.prompt for ex in examples]
    images = [load_images(ex.row, image_cols) for ex in examples]
    layouts = [ex.layout for ex in examples]
    if mode == "one_pass":
        probs = one_pass_probabilities(model, processor, prompts, images, layouts=layouts, batch_size=batch_size)
        return probs, [LETTERS[i] for i in probs.argmax(1)]
    responses = generate_answers(model, processor, prompts, images, layouts=layouts, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, stop_at_answer=True)
    probs = letter_probabilities(model, processor, prompts, images, responses, layouts=layouts, batch_size=batch_size)
    return probs, [parse_response(r, option_descriptions(p))[1] for r, p in zip(responses, prompts, strict=True)]


def calibrate_run(run_dir: Path, model, processor, data, *, batch_size: int, max_new_tokens: int) -> dict:
    """Fit each mode's temperature on the run's val samples; write and return ``calibration.json``."""
    from ..core.calibration import fit_temperature
    from ..core.data import sample_ids_hash
    from .examples import build_examples

    val_ex, _ = build_examples(data.val_df, data, target="teacher", fill_missing=True, sample_level=True)
    truth = [ex.letter for ex in val_ex]
    out: dict = {"fit_on": "val", "n_val": len(val_ex), "val_ids_hash": sample_ids_hash([e.key[0] for e in val_ex],
                                                                                 [e.key[1] for e in val_ex])}
    for mode in MODES:
        if not val_ex:
            out[mode] = {"temperature": 1.0, "n": 0, "nll_before": None, "nll_after": None, "val_accuracy": None}
            continue
        probs, letters = val_letter_probabilities(model, processor, val_ex, data.image_cols, mode=mode,
                                                  batch_size=batch_size, max_new_tokens=max_new_tokens)
        out[mode] = {**fit_temperature(probs, truth),
                     "val_accuracy": sum(x == t for x, t in zip(letters, truth, strict=True)) / len(truth)}
    (Path(run_dir) / CALIBRATION).write_text(json.dumps(out, indent=1))
    return out


def read_calibration(folder: Path | None) -> dict | None:
    """A run's (or exported model's) ``calibration.json``; None when it has none."""
    if folder is None or not (Path(folder) / CALIBRATION).is_file():
        return None
    return json.loads((Path(folder) / CALIBRATION).read_text())
