"""The student families, as data: one row per model family the project trains and serves.

Every code path that used to be written for one family reads this table instead: the model
type check (``modeling.model_kind``), the visual-token size (``modeling.visual_token_factor``),
the LoRA targets (``modeling.lora_target_modules``), the chat-template quirks
(``modeling.load_processor``), the offline kit's tiny students (``synthetic.student``) and the
docs' table of students (docs/students.md). Adding a family means adding a row; a family that
needs more than a row (Gemma 4 and SmolVLM, see docs/students.md) is not in the table.

What every row shares (and so is no field): a ChatML conversation whose turns end in
``<|im_end|>`` (the collator's end token), the image placeholder
``<|vision_start|><|image_pad|><|vision_end|>``, a ``Qwen2VLImageProcessor`` whose pixel budget
is ``size = {shortest_edge, longest_edge}`` in pixels, and a model that
``AutoModelForImageTextToText`` loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

# --------------------------------------------------------------------------- module patterns
# Matched with re.fullmatch on module names (peft's rule for a string target_modules). The
# language model's decoder blocks live at `model.language_model.layers.N.*` in transformers 5
# (4.x: `model.layers.N.*`), never under `visual`.
_DECODER = r"(?!.*\bvisual\b)(?:.*\.)?layers\.\d+\."
_ATTENTION = r"self_attn\.(?:q_proj|k_proj|v_proj|o_proj)"
_MLP = r"mlp\.(?:gate_proj|up_proj|down_proj)"
# Qwen3.5's Gated DeltaNet blocks (3 of every 4 layers): their token mixer's linear layers.
_LINEAR_ATTENTION = r"linear_attn\.(?:in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|out_proj)"
_VISION_BLOCK = r"(?:.*\.)?visual\.blocks\.\d+\."


@dataclass(frozen=True)
class Family:
    """What differs between two student families. Regexes are peft ``target_modules`` strings."""

    kind: str  # the name users, run folders and the kit use ("qwen3.5")
    model_type: str  # config.json's model_type ("qwen3_5")
    model_class: str  # the transformers class AutoModelForImageTextToText picks
    processor_class: str  # the transformers processor class AutoProcessor picks
    tokenizer_class: str  # the tokenizer class AutoTokenizer picks (whatever the folder says)
    example: str  # a hub id of the family, for messages and docs
    patch_size: int  # pixels per side of one vision patch
    merge_size: int  # patches per side merged into one visual token
    language_layers: str  # the decoder blocks' linear layers: LoRA's default targets
    vision_blocks: str  # the vision encoder blocks' linear layers (--tune-vision)
    merger: str  # the vision -> language projector's linear layers (--tune-merger)
    # Jinja put before the model's own chat template when the processor is loaded. Qwen3.5's
    # template opens a <think> block in the generation prompt (4B and larger by default) and
    # writes an empty one before the last answer; the student's reasoning is its <analysis>,
    # so thinking is switched off: the prompt then ends in an empty <think></think> and is a
    # prefix of the rendered conversation, as the label mask needs.
    template_prelude: str = ""
    # The hub processor's own pixel budget (preprocessor_config.json `size`), which
    # load_processor caps at DEFAULT_MAX_PIXELS; the kit's make_processor copies it.
    hub_pixel_budget: tuple[int, int] = (3136, 12845056)

    @property
    def visual_token_factor(self) -> int:
        """Pixels per side of one merged visual token (patch size x spatial merge)."""
        return self.patch_size * self.merge_size


FAMILIES: tuple[Family, ...] = (
    Family(
        kind="qwen3-vl", model_type="qwen3_vl", model_class="Qwen3VLForConditionalGeneration",
        processor_class="Qwen3VLProcessor", tokenizer_class="Qwen2Tokenizer",
        example="Qwen/Qwen3-VL-8B-Instruct",
        patch_size=16, merge_size=2,
        language_layers=f"{_DECODER}(?:{_ATTENTION}|{_MLP})",
        vision_blocks=rf"{_VISION_BLOCK}(?:attn\.(?:qkv|proj)|mlp\.(?:linear_fc1|linear_fc2))",
        # the merger and the deepstack mergers, which feed vision features into early layers
        merger=r"(?:.*\.)?visual\.(?:merger|deepstack_merger_list\.\d+)\.(?:linear_fc1|linear_fc2)",
        hub_pixel_budget=(65536, 16777216),
    ),
    Family(
        kind="qwen3.5", model_type="qwen3_5", model_class="Qwen3_5ForConditionalGeneration",
        processor_class="Qwen3VLProcessor", tokenizer_class="Qwen3_5Tokenizer",
        example="Qwen/Qwen3.5-9B",
        patch_size=16, merge_size=2,
        # hybrid blocks: Gated DeltaNet (linear_attn) in 3 of 4 layers, gated attention in the 4th
        language_layers=f"{_DECODER}(?:{_ATTENTION}|{_LINEAR_ATTENTION}|{_MLP})",
        vision_blocks=rf"{_VISION_BLOCK}(?:attn\.(?:qkv|proj)|mlp\.(?:linear_fc1|linear_fc2))",
        merger=r"(?:.*\.)?visual\.merger\.(?:linear_fc1|linear_fc2)",  # no deepstack mergers
        template_prelude="{%- set enable_thinking = false -%}",
        hub_pixel_budget=(65536, 16777216),
    ),
    Family(
        kind="qwen2.5-vl", model_type="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration",
        processor_class="Qwen2_5_VLProcessor", tokenizer_class="Qwen2Tokenizer",
        example="Qwen/Qwen2.5-VL-7B-Instruct",
        patch_size=14, merge_size=2,
        language_layers=f"{_DECODER}(?:{_ATTENTION}|{_MLP})",
        vision_blocks=rf"{_VISION_BLOCK}(?:attn\.(?:qkv|proj)|mlp\.(?:gate_proj|up_proj|down_proj))",
        merger=r"(?:.*\.)?visual\.merger\.mlp\.[02]",
    ),
    Family(
        kind="qwen2-vl", model_type="qwen2_vl", model_class="Qwen2VLForConditionalGeneration",
        processor_class="Qwen2VLProcessor", tokenizer_class="Qwen2Tokenizer",
        example="Qwen/Qwen2-VL-7B-Instruct",
        patch_size=14, merge_size=2,
        language_layers=f"{_DECODER}(?:{_ATTENTION}|{_MLP})",
        vision_blocks=rf"{_VISION_BLOCK}(?:attn\.(?:qkv|proj)|mlp\.(?:fc1|fc2))",
        merger=r"(?:.*\.)?visual\.merger\.mlp\.[02]",
    ),
)

DEFAULT_KIND = "qwen3-vl"  # Qwen/Qwen3-VL-8B-Instruct: the workflow users know


def kinds() -> tuple[str, ...]:
    return tuple(f.kind for f in FAMILIES)


def supported() -> str:
    """The families on one line, for error messages."""
    return "; ".join(f"{f.kind} ({f.model_type}, e.g. {f.example})" for f in FAMILIES)


def family(kind: str) -> Family:
    """The row of ``kind`` ("qwen3.5"); UserError listing the families for anything else."""
    for f in FAMILIES:
        if f.kind == str(kind).lower():
            return f
    raise UserError(f"unknown student kind {kind!r}; supported: {', '.join(kinds())}")


def family_of_type(model_type: str | None, *, where: str = "") -> Family:
    """The row whose ``model_type`` is config.json's; UserError listing the families otherwise."""
    for f in FAMILIES:
        if f.model_type == model_type:
            return f
    at = f" ({where})" if where else ""
    raise UserError(f"unsupported model type {model_type!r}{at}: the student must be one of "
                    f"{supported()}; see docs/students.md")
