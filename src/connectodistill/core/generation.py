"""Generation with the student: batched greedy (or sampled) responses to (prompt, views) pairs.

Shared by evaluation, training's val accuracy and predict, so that all of them render the
conversation, pad and decode the same way. Heavy imports happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .conversation import build_messages

__all__ = ["ANSWER_TAG", "answer_context", "answer_row_ids", "generate_answers", "letter_probabilities",
           "letter_token_ids", "one_pass_letter_ids", "one_pass_probabilities", "render_prompts"]

ANSWER_TAG = "<answer>"
ANSWER_CLOSE = "</answer>"


def render_prompts(processor, prompts: Sequence[str], images: Sequence[list],
                   layouts: Sequence[str | None] | None = None) -> list[str]:
    """The chat-template text of each user turn, ending with the assistant header."""
    layouts = layouts or [None] * len(prompts)
    return [
        processor.apply_chat_template(build_messages(p, n_images=len(im), layout=lay),
                                      add_generation_prompt=True, tokenize=False)
        for p, im, lay in zip(prompts, images, layouts, strict=True)
    ]


def generate_answers(model, processor, prompts: list[str], images: list[list], *,
                     layouts: Sequence[str | None] | None = None, batch_size: int = 4,
                     max_new_tokens: int = 1024, stop_at_answer: bool = False,
                     do_sample: bool = False, temperature: float = 1.0, num_return_sequences: int = 1,
                     progress: Callable[[int], None] | None = None) -> list[str] | list[list[str]]:
    """Responses for (prompt, views) pairs, batched with left padding.

    Greedy by default. ``stop_at_answer`` ends a response at its first ``</answer>`` (what
    the answer rule reads), which keeps val scoring cheap. With ``do_sample`` and
    ``num_return_sequences`` K > 1 each item gets a list of K sampled responses.
    """
    import torch

    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"  # generation continues from the right edge of every row
    layouts = list(layouts) if layouts is not None else [None] * len(prompts)
    responses: list = []
    model.eval()
    extra = {"stop_strings": ["</answer>"], "tokenizer": tok} if stop_at_answer else {}
    if do_sample:
        extra.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                     num_return_sequences=num_return_sequences)
    else:
        extra.update(do_sample=False)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            texts = render_prompts(processor, [prompts[i] for i in chunk], [images[i] for i in chunk],
                                   [layouts[i] for i in chunk])
            flat = [im for i in chunk for im in images[i]]
            inputs = processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
            inputs = inputs.to(model.device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                     pad_token_id=tok.pad_token_id, **extra)
            new = out[:, inputs["input_ids"].shape[1]:]
            decoded = tok.batch_decode(new, skip_special_tokens=True)
            if do_sample and num_return_sequences > 1:
                k = num_return_sequences
                responses += [decoded[i * k:(i + 1) * k] for i in range(len(chunk))]
            else:
                responses += decoded
            if progress is not None:
                progress(len(chunk))
    finally:
        tok.padding_side = old_side
    return responses


def answer_context(response: str) -> str:
    """A response up to and including its first ``<answer>``; without one, response + ``<answer>``."""
    i = response.find(ANSWER_TAG)
    return response[:i + len(ANSWER_TAG)] if i >= 0 else response + ANSWER_TAG


def letter_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """For each text ending in ``<answer>``: the id of the one token each letter a-g adds to it.

    ``text + letter`` is tokenized for the seven letters; the seven sequences must agree on
    every token but their last, which must differ per letter (it may carry the tag's final
    characters: a byte-level BPE with Qwen's pre-tokenizer reads ``<answer>a`` as
    ``<answer`` + ``>a``). Anything else is a UserError: the letter probabilities would
    not be a distribution over seven single next tokens.
    """
    from .errors import UserError
    from .task import LETTERS

    k = len(LETTERS)
    enc = tokenizer([t + x for t in texts for x in LETTERS], add_special_tokens=False)["input_ids"]
    out = []
    for i, text in enumerate(texts):
        seqs = [list(s) for s in enc[i * k:(i + 1) * k]]
        head = seqs[0][:-1]
        if not (all(len(s) == len(head) + 1 and s[:-1] == head for s in seqs) and len({s[-1] for s in seqs}) == k):
            tails = {x: tokenizer.convert_ids_to_tokens(s[-3:]) for x, s in zip(LETTERS, seqs, strict=True)}
            raise UserError(
                f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) does not "
                f"make each answer letter one token right after {ANSWER_TAG!r} (after ...{text[-40:]!r} the "
                f"letters end in {tails}); letter probabilities need one next token per letter"
            )
        out.append([s[-1] for s in seqs])
    return out


def one_pass_letter_ids(tokenizer) -> list[int]:
    """The token of each letter a-g after an opened answer block, for one-pass answers: each
    letter tokenized alone must be exactly one token, seven distinct ones (else a UserError: a
    one-pass answer needs one next token per letter)."""
    from .errors import UserError
    from .task import LETTERS

    ids = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in LETTERS]
    if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(LETTERS):
        raise UserError(f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) does not "
                        f"make each answer letter one token ({dict(zip(LETTERS, ids, strict=True))}); one-pass "
                        "answers need one next token per letter")
    return [i[0] for i in ids]


def answer_row_ids(tokenizer, letter: str) -> tuple[list[int], list[int]]:
    """(context, target) token ids of an answer-only assistant turn: the opened block
    ``<answer>`` is context, the letter and ``</answer>`` are what is learned (the caller adds
    the turn's end). Tokenized in pieces, so the letter is the very token one-pass answers read
    after the same context (``one_pass_probabilities``)."""
    from .task import LETTERS

    context = tokenizer(ANSWER_TAG, add_special_tokens=False)["input_ids"]
    letter_id = one_pass_letter_ids(tokenizer)[LETTERS.index(letter)]
    return context, [letter_id] + tokenizer(ANSWER_CLOSE, add_special_tokens=False)["input_ids"]


def _batch_inputs(processor, texts: list[str], images: list, append: list[int] | None = None):
    """The processor's batch (left padding) for ``texts`` and their views, with ``append``
    token ids added at the end of every row (the answer block's opening)."""
    import torch

    inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    if append:
        shape, extra = inputs["input_ids"].shape, torch.tensor(append)
        n = shape[0]
        for key in list(inputs.keys()):
            v = inputs[key]
            if torch.is_tensor(v) and v.dim() == 2 and v.shape == shape:  # per-token: ids, mask, types
                tail = extra if key == "input_ids" else torch.full((len(append),), 1 if key == "attention_mask" else 0)
                inputs[key] = torch.cat([v, tail.to(v.dtype).expand(n, -1)], dim=1)
    return inputs


def _softmax_at_end(model, inputs, ids):
    """Softmax over the letter tokens ``ids`` (b, 7) at the last position of each row: one
    forward pass, logits only there."""
    import torch

    inputs = inputs.to(model.device)
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
    picked = logits.gather(1, ids.to(logits.device)).double()
    return torch.softmax(picked, dim=-1).cpu().numpy()


def letter_probabilities(model, processor, prompts: Sequence[str], images: Sequence[list],
                         responses: Sequence[str], *, layouts: Sequence[str | None] | None = None,
                         batch_size: int = 4, progress: Callable[[int], None] | None = None):
    """The model's distribution over the seven letters at the answer position of each response.

    One teacher-forced forward pass per sample over the rendered prompt (``render_prompts``,
    the views through the processor as in ``generate_answers``) + ``answer_context(response)``;
    the next-token probabilities of the seven letter tokens (``letter_token_ids``), renormalised
    to sum to 1. Batched with left padding, so the answer position is every row's last one.
    Returns a float64 array of shape (n, 7), columns in the order of ``task.LETTERS``.
    """
    import numpy as np
    import torch

    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    layouts = list(layouts) if layouts is not None else [None] * len(prompts)
    out = np.zeros((len(prompts), 7))
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            texts = [t + answer_context(responses[i]) for t, i in zip(
                render_prompts(processor, [prompts[i] for i in chunk], [images[i] for i in chunk],
                               [layouts[i] for i in chunk]), chunk, strict=True)]
            ids = torch.tensor(letter_token_ids(tok, texts))  # (b, 7)
            flat = [im for i in chunk for im in images[i]]
            # Feed text + "a" and drop its last token: the context is then exactly the seven
            # sequences' shared tokens, whatever the tokenizer merges across the tag.
            inputs = _batch_inputs(processor, [t + "a" for t in texts], flat)
            if not torch.equal(inputs["input_ids"][:, -1], ids[:, 0]):
                from .errors import UserError

                raise UserError("the processor tokenizes the answer letter differently from its tokenizer")
            for key in list(inputs.keys()):
                if key.endswith(("input_ids", "attention_mask", "token_type_ids")):
                    inputs[key] = inputs[key][:, :-1]
            out[start:start + len(chunk)] = _softmax_at_end(model, inputs, ids)
            if progress is not None:
                progress(len(chunk))
    finally:
        tok.padding_side = old_side
    return out


def one_pass_probabilities(model, processor, prompts: Sequence[str], images: Sequence[list], *,
                           layouts: Sequence[str | None] | None = None, batch_size: int = 4,
                           progress: Callable[[int], None] | None = None, prefetch: bool | None = None):
    """One-pass answers: the distribution over the seven letters right after the question and
    an opened answer block, without generating anything.

    One forward pass per batch over the rendered prompt (``render_prompts``, views through the
    processor as at generation) followed by the ``<answer>`` tokens exactly as answer rows are
    trained (``answer_row_ids``); the next-token probabilities of the seven letters
    (``one_pass_letter_ids``), renormalised to sum to 1. Returns (n, 7) float64 in the order of
    ``task.LETTERS``; the answer is its argmax.

    ``prefetch`` prepares the next batch's inputs (template, image processor) in a thread while
    this batch's forward pass runs; by default on an accelerator, where the CPU is otherwise
    idle during the forward pass. On a CPU both compete for the same cores (measured slower:
    bench/README.md, onepass).
    """
    import numpy as np
    import torch

    tok = processor.tokenizer
    ids = torch.tensor([one_pass_letter_ids(tok)])
    opening = tok(ANSWER_TAG, add_special_tokens=False)["input_ids"]
    old_side = tok.padding_side
    tok.padding_side = "left"
    layouts = list(layouts) if layouts is not None else [None] * len(prompts)
    out = np.zeros((len(prompts), 7))
    model.eval()
    starts = range(0, len(prompts), batch_size)

    def prepare(start: int):
        chunk = range(start, min(start + batch_size, len(prompts)))
        texts = render_prompts(processor, [prompts[i] for i in chunk], [images[i] for i in chunk],
                               [layouts[i] for i in chunk])
        return _batch_inputs(processor, texts, [im for i in chunk for im in images[i]], opening)

    if prefetch is None:
        prefetch = next(model.parameters()).device.type != "cpu"

    def batches():
        if not prefetch:
            yield from map(prepare, starts)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(prepare, starts[0]) if len(starts) else None
            for k in range(len(starts)):
                inputs = ahead.result()
                if k + 1 < len(starts):
                    ahead = pool.submit(prepare, starts[k + 1])
                yield inputs

    try:
        for start, inputs in zip(starts, batches(), strict=True):
            n = inputs["input_ids"].shape[0]
            out[start:start + n] = _softmax_at_end(model, inputs, ids.expand(n, -1))
            if progress is not None:
                progress(n)
    finally:
        tok.padding_side = old_side
    return out
