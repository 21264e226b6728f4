"""The SFT collator: examples -> model inputs, loss only on the assistant's answer.

A plain callable (as TRL's collators), shared by the SFT recipe and DPO's on-policy sampling.
"""

from __future__ import annotations

from typing import Any

from ..core.conversation import build_messages, load_images
from ..core.errors import UserError
from .examples import Example

IGNORE_INDEX = -100


class DistillCollator:
    """Examples -> model inputs with labels only on the assistant answer and its end token.

    The prompt is rendered with the generation prompt and run through the processor with the
    images (so image tokens are expanded exactly as at eval time); the answer is tokenized
    on its own and appended. Labels are -100 on the prompt, the images and the padding. An
    answer row (``Example.answer_row``) appends ``<answer>`` as context, then the letter token
    and ``</answer>`` as one-pass answers read them (``generation.answer_row_ids``): only those
    and the end are learned, so nothing teaches the student to open its turn with ``<answer>``
    and plain generation stays rationale-first.
    Image tokens are never truncated: an over-long sample is an error. Logits are computed only
    where the loss reads them (``logits_to_keep`` + ``shift_labels``).
    """

    def __init__(self, processor, image_cols: tuple[str, ...], max_length: int | None = None,
                 multi_task: bool = False):
        self.processor = processor
        # rationale and answer rows in one run: every batch says which row is which, so that
        # the trainer weighs the two tasks the same way whatever a batch happens to hold
        self.multi_task = multi_task
        self.tokenizer = processor.tokenizer
        self.image_cols = image_cols
        self.max_length = max_length
        self.end_token = "<|im_end|>"
        self.end_id = self.tokenizer.convert_tokens_to_ids(self.end_token)
        self.pad_id = self.tokenizer.pad_token_id

    def encode(self, ex: Example) -> dict:
        import torch

        tmpl = self.processor.apply_chat_template
        n_images = len(self.image_cols)
        prompt_text = tmpl(build_messages(ex.prompt, n_images=n_images, layout=ex.layout),
                           add_generation_prompt=True, tokenize=False)
        full_text = tmpl(build_messages(ex.prompt, ex.target, n_images=n_images, layout=ex.layout), tokenize=False)
        # The label boundary relies on the template rendering the prompt as a strict prefix.
        if not full_text.startswith(prompt_text + ex.target + self.end_token):
            raise UserError(
                "the model's chat template does not render the prompt as a prefix of the "
                "conversation; cannot place the loss mask safely"
            )
        images = load_images(ex.row, self.image_cols)
        enc = self.processor(text=[prompt_text], images=images, return_tensors="pt")
        if ex.answer_row:  # "<answer>" is context; the letter, "</answer>" and the end are learned
            from ..core.generation import answer_row_ids

            context, answer = answer_row_ids(self.tokenizer, ex.letter)
            answer = answer + [self.end_id]
        else:
            context, answer = [], self.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [self.end_id]
        tail = context + answer
        n_prompt = enc["input_ids"].shape[1] + len(context)
        out = {}
        for k, v in enc.items():
            if torch.is_tensor(v) and v.dim() == 2 and v.shape == enc["input_ids"].shape:
                extra = {"input_ids": tail, "attention_mask": [1] * len(tail)}.get(k, [0] * len(tail))
                out[k] = torch.cat([v[0], torch.tensor(extra, dtype=v.dtype)])
            else:
                out[k] = v
        out["labels"] = torch.cat(
            [torch.full((n_prompt,), IGNORE_INDEX), torch.tensor(answer)]
        )
        if self.max_length and out["input_ids"].shape[0] > self.max_length:
            raise UserError(
                f"sample {ex.key[0]}/{ex.key[1]} needs {out['input_ids'].shape[0]} tokens "
                f"({n_prompt} prompt incl. images + {len(answer)} answer) > max_length "
                f"{self.max_length}; lower --max-pixels or raise max_length"
            )
        return out

    def __call__(self, examples: list[Example]) -> dict:
        import torch

        encoded = [self.encode(ex) for ex in examples]
        width = max(e["input_ids"].shape[0] for e in encoded)
        batch: dict[str, Any] = {}
        for k in encoded[0]:
            vals = [e[k] for e in encoded]
            if vals[0].dim() == 1:  # per-token: right-pad to the batch width
                fill = {"input_ids": self.pad_id, "labels": IGNORE_INDEX}.get(k, 0)
                batch[k] = torch.stack(
                    [torch.cat([v, torch.full((width - len(v),), fill, dtype=v.dtype)]) for v in vals]
                )
            else:  # pixel_values / image_grid_thw: concatenated over all images of the batch
                batch[k] = torch.cat(vals, dim=0)
        if not (batch["labels"] != IGNORE_INDEX).any():
            raise ValueError("batch has no label tokens: the loss would be NaN")
        # The loss needs logits only at positions followed by a label (the answer), not at the
        # prompt's: on a real student (151k-word vocabulary, long prompts) the full logit tensor
        # is most of a step's activation memory. transformers' own loss takes `shift_labels`
        # aligned with the kept positions; `labels` stays so that the model computes it.
        labels = batch["labels"]
        positions = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        # One row of positions per sample (the same for all), so that anything splitting the
        # batch along dim 0 (nn.DataParallel) splits them with the rows.
        batch["logits_to_keep"] = positions.expand(labels.shape[0], -1).contiguous()
        batch["shift_labels"] = labels[:, positions + 1].contiguous()
        if self.multi_task:
            batch["answer_row"] = torch.tensor([ex.answer_row for ex in examples])
        return batch
