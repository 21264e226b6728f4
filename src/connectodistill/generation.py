"""Generation with the student: batched greedy (or sampled) responses to (prompt, views) pairs.

Shared by evaluation, training's val accuracy and predict, so that all of them render the
conversation, pad and decode the same way. Heavy imports happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .conversation import build_messages

__all__ = ["generate_answers", "render_prompts"]


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
