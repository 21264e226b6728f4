"""Tiny randomly-initialised Qwen-VL students that load with the ordinary ``from_pretrained``.

``make_tiny_student(path, kind)`` writes a complete model folder (config, safetensors weights,
byte-level BPE tokenizer, ChatML chat template, image/video processor, processor, generation
config), so that ``AutoModelForImageTextToText``, ``AutoProcessor`` and ``AutoTokenizer`` load it
from the local path exactly as they load ``Qwen/Qwen3-VL-8B-Instruct`` from the Hub. It takes
about a second and a few MB; the whole pipeline (train, evaluate, report) runs on it on a CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..core.errors import UserError
from ..core.families import Family, family, kinds
from .templates import CHAT_TEMPLATE, QWEN35_CHAT_TEMPLATE

KINDS: tuple[str, ...] = kinds()  # every family of core/families.py

# Qwen's special tokens, in Qwen's own order (they follow the BPE vocabulary, as in Qwen).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# Qwen3.5's tokenizer has these as added (not special) tokens: its template writes them.
THINK_TOKENS: tuple[str, ...] = ("<think>", "</think>")

_ENGLISH = """The quick brown fox jumps over the lazy dog. This is a short sample of plain English text
so that a tiny tokenizer knows common words: the, a, an, of, to, in, and, or, is, are, was, were,
it, this, that, these, those, with, from, by, for, on, at, as, not, no, yes, one, two, three,
image, images, view, views, shows, show, shown, see, seen, looks, look, like, large, small,
round, thin, long, short, dark, bright, left, right, top, bottom, front, side, center, edge,
structure, object, cell, cells, body, bodies, branch, branches, branching, process, processes,
segment, segments, neuron, neurons, axon, axons, dendrite, dendrites, soma, somas, nucleus,
glia, glial, vessel, vessels, blood, irregular, smooth, several, multiple, single, only, more,
than, which, what, there, here, appears, appear, visible, clearly, likely, probably, therefore,
because, however, answer, analysis, describe, choice, letter, best, describes, none, above, unsure.
"""


def make_tiny_student(
    path: str | Path,
    kind: str = "qwen3-vl",
    *,
    image_size: int = 64,
    text_hidden: int = 128,
    text_layers: int = 2,
    vision_hidden: int = 64,
    vision_depth: int = 2,
    seed: int = 0,
) -> Path:
    """Build and save a tiny randomly-initialised student folder of family ``kind``; return it.

    ``kind`` is a family of core/families.py: ``"qwen3-vl"``, ``"qwen3.5"``, ``"qwen2.5-vl"``
    or ``"qwen2-vl"``. The image processor's pixel budget is pinned around ``side**2``,
    ``side = round(image_size / factor) * factor``, so that every square view, whatever its
    resolution, becomes ``(side / factor)**2`` visual tokens (factor 32 for Qwen3-VL and
    Qwen3.5, 28 for Qwen2/2.5-VL; 4 tokens at 64 px; at factor 32 and 64 px min = max = 4096
    pixels). Same arguments and ``seed`` give identical weights. A Qwen3.5 student has the
    family's hybrid layers (Gated DeltaNet, with full attention in every 4th and the last
    layer) and a chat template with Qwen3.5's <think> block (QWEN35_CHAT_TEMPLATE).
    """
    import torch

    fam = family(kind)
    kind = fam.kind
    for name, value in (("image_size", image_size), ("text_hidden", text_hidden),
                        ("text_layers", text_layers), ("vision_hidden", vision_hidden),
                        ("vision_depth", vision_depth)):
        if int(value) < 1:
            raise UserError(f"make_tiny_student: {name} must be a positive integer, got {value}")
    if text_hidden % 32 or vision_hidden % 16:
        raise UserError(
            "make_tiny_student: text_hidden must be a multiple of 32 and vision_hidden of 16 "
            f"(got {text_hidden}, {vision_hidden})"
        )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(fam)
    patch, merge = fam.patch_size, fam.merge_size
    factor = fam.visual_token_factor
    side = max(1, round(image_size / factor)) * factor  # what a square view is resized to
    min_pixels, max_pixels = _pixel_budget(side, factor)
    processor = _build_processor(fam, tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)

    config = _build_config(
        kind, tokenizer, text_hidden=text_hidden, text_layers=text_layers,
        vision_hidden=vision_hidden, vision_depth=vision_depth, patch=patch, merge=merge,
    )
    import transformers

    model_cls = getattr(transformers, fam.model_class)
    cpu_rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = model_cls(config).to(torch.float32).eval()
            # The default init (std 0.02) gives lm_head rows of norm ~0.2; with that head frozen
            # and RMS-normed hidden states no logit margin can pass ~2.5, so LoRA on the decoder
            # stalls at a loss of ~4-5 although greedy decoding is already right. Rows of norm ~1
            # (std 1/sqrt(hidden)) let the loss fall as on a real model; logits start at std ~1.
            torch.nn.init.normal_(model.lm_head.weight, mean=0.0, std=text_hidden**-0.5)
            # Likewise the vision blocks and the merger(s): at std 0.02 each of these narrow (64-256
            # wide) linear layers shrinks what it passes on 3-6x, so the views reach the language
            # model faintly; std 1/sqrt(fan_in) keeps their scale (bench/README.md, "demo").
            for name, p in model.model.visual.named_parameters():
                if p.dim() >= 2 and not name.startswith(("patch_embed", "pos_embed")):
                    torch.nn.init.normal_(p, mean=0.0, std=p[0].numel() ** -0.5)
    finally:
        torch.random.set_rng_state(cpu_rng)

    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        do_sample=False,
    )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 4 MB file
    try:
        model.save_pretrained(path)
        processor.save_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return path


# The real hub processors' own pixel budgets (preprocessor_config.json `size`), from the table
# of families: Qwen3-VL and Qwen3.5 256*256 .. 4096*4096, Qwen2/2.5-VL 56*56 .. 12845056
# (load_processor then caps the maximum).
REAL_PIXEL_BUDGETS: dict[str, tuple[int, int]] = {k: family(k).hub_pixel_budget for k in KINDS}


def make_processor(path: str | Path, kind: str = "qwen3-vl", *, min_pixels: int | None = None,
                   max_pixels: int | None = None) -> Path:
    """Save only the kit's processor (tokenizer, chat template, image/video processor) at ``path``.

    For a model built from a config without weights (benchmarks of the real model's shape):
    the real patch size and merge of ``kind``, and by default the real hub processor's own
    pixel budget (``REAL_PIXEL_BUDGETS``), so that ``modeling.load_processor`` resolves the
    budget exactly as for the hub id. The tokenizer is the kit's small BPE, not Qwen's; the
    chat template is the family's as ``load_processor`` hands it out (its prelude in front).
    """
    from ..core.modeling import with_template_prelude

    fam = family(kind)
    real_min, real_max = fam.hub_pixel_budget
    min_pixels = real_min if min_pixels is None else int(min_pixels)
    max_pixels = real_max if max_pixels is None else int(max_pixels)
    processor = _build_processor(fam, _build_tokenizer(fam), min_pixels=min_pixels, max_pixels=max_pixels)
    # no config.json beside it, so load_processor cannot tell the family: put the prelude in now
    processor.chat_template = with_template_prelude(processor.chat_template, fam)
    processor.tokenizer.chat_template = with_template_prelude(processor.tokenizer.chat_template, fam)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- tokenizer


def _corpus() -> list[str]:
    from ..core.conversation import tokenizer_corpus
    from .teacher import ANALYSIS_DETAIL, ANALYSIS_PHRASES, teacher_prompt_text

    texts = list(tokenizer_corpus()) + [ANALYSIS_DETAIL.format(n=n) for n in range(5, 60)]
    # the kit teacher's own prompt (what the student is trained and scored on), all settings
    for species in ("mouse", "fly"):
        for guidance in (True, False):
            texts.append(teacher_prompt_text(species, "1234.5 x 6789.0 x 2345.25", guidance))
    for phrases in dict(ANALYSIS_PHRASES).values():
        if isinstance(phrases, str):
            texts.append(phrases)
        else:
            texts.extend(str(p) for p in phrases)
    texts += _ENGLISH.split("\n")
    # repeat the task text so its words win merges over the one-off English words
    return texts * 3 + [_ENGLISH]


def _build_tokenizer(fam: Family | None = None, vocab_size: int = 1536):
    """A byte-level BPE (Qwen's pre-tokenizer) trained on the task text, as the family's
    tokenizer class (Qwen2Tokenizer; Qwen3_5Tokenizer, with <think> and </think>, for Qwen3.5)."""
    import transformers
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    fam = fam or family("qwen3-vl")

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    vocab = dict(bpe.get_vocab())
    import json

    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    thinking = bool(fam.template_prelude)  # the families whose template writes <think> blocks
    if thinking:
        for token in THINK_TOKENS:
            vocab[token] = len(vocab)

    tokenizer = getattr(transformers, fam.tokenizer_class)(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    if thinking:  # added, not special: decoding with skip_special_tokens keeps them, as Qwen's
        tokenizer.add_tokens(list(THINK_TOKENS))
    tokenizer.chat_template = QWEN35_CHAT_TEMPLATE if thinking else CHAT_TEMPLATE
    return tokenizer


# --------------------------------------------------------------------------- processor


def _pixel_budget(side: int, factor: int) -> tuple[int, int]:
    """(min_pixels, max_pixels) that resize every square view to exactly ``side`` x ``side``.

    ``side**2`` for both when transformers' ``smart_resize`` lands exactly on it for every
    square size (true for Qwen3-VL at 64 or 128 px); otherwise a band of half a factor either
    side, because ``smart_resize`` floors/ceils ``h / sqrt(h*h / max_pixels) / factor`` in
    floating point, and e.g. min = max = 56*56 turns many view sizes into 1 or 9 tokens.
    """
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    except ImportError:  # pragma: no cover - moved in a future transformers
        smart_resize = None
    exact = (side * side, side * side)
    if smart_resize is not None and all(
        smart_resize(h, h, factor, *exact) == (side, side) for h in range(8, 2049)
    ):
        return exact
    return (side - factor // 2) ** 2, (side + factor // 2) ** 2


def _build_processor(fam: Family, tokenizer, *, min_pixels: int, max_pixels: int):
    import transformers

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    shape = dict(size=size, patch_size=fam.patch_size, merge_size=fam.merge_size, temporal_patch_size=2)
    image_processor = transformers.Qwen2VLImageProcessor(**shape)
    # Qwen3-VL and Qwen3.5 share Qwen3-VL's processor and video processor
    video_cls = "Qwen3VLVideoProcessor" if fam.processor_class == "Qwen3VLProcessor" else "Qwen2VLVideoProcessor"
    video = getattr(transformers, video_cls)(**shape)
    return getattr(transformers, fam.processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video,
        chat_template=tokenizer.chat_template)


# --------------------------------------------------------------------------- model


def _mrope_section(head_dim: int, kind: str) -> list[int]:
    """Split the rotary frequencies over (time, height, width) like the real models.

    Qwen-VL rotates all of head_dim (head_dim/2 frequencies: Qwen3-VL [24, 20, 20] of 64,
    Qwen2/2.5-VL [16, 24, 24] of 64); Qwen3.5 only a quarter (partial_rotary_factor 0.25:
    head_dim/8 frequencies, [11, 11, 10] of 32 at head_dim 256). transformers does not check
    the sum: a wrong section runs silently with its slices clipped.
    """
    if kind == "qwen3.5":
        half = int(head_dim * QWEN35_ROTARY_FACTOR) // 2
        ratios, of = (11, 11, 10), 32
    else:
        half = head_dim // 2
        ratios, of = ((24, 20, 20) if kind == "qwen3-vl" else (16, 24, 24)), 64
    hw = [math.floor(half * r / of) for r in ratios[1:]]
    return [half - sum(hw), *hw]


QWEN35_ROTARY_FACTOR = 0.25  # Qwen3.5's partial_rotary_factor (transformers' default too)
QWEN35_HEAD_DIM = 64  # the real models' is 256; 64 keeps 8 rotary frequencies at factor 0.25


def _qwen35_config(tokenizer, text: dict, token_ids: dict, *, text_hidden, text_layers,
                   vision_hidden, vision_depth, patch, merge):
    """Qwen3.5's hybrid decoder: Gated DeltaNet layers, full (gated) attention in every 4th
    layer as in the real models and in the last one, so that even 2 layers have both kinds."""
    import transformers

    heads = max(1, text_hidden // QWEN35_HEAD_DIM)
    layer_types = ["full_attention" if (i + 1) % 4 == 0 or i == text_layers - 1 else "linear_attention"
                   for i in range(text_layers)]
    text.update(
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=QWEN35_HEAD_DIM,
        layer_types=layer_types,
        # value heads must be a multiple of key heads (the real 9B: 16 key, 32 value heads of 128)
        linear_num_key_heads=max(1, heads // 2), linear_num_value_heads=heads,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000_000.0,
                         "partial_rotary_factor": QWEN35_ROTARY_FACTOR,
                         "mrope_section": _mrope_section(QWEN35_HEAD_DIM, "qwen3.5"),
                         "mrope_interleaved": True},
    )
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                  num_heads=max(1, vision_hidden // 16), patch_size=patch, spatial_merge_size=merge,
                  temporal_patch_size=2, out_hidden_size=text_hidden,
                  num_position_embeddings=16 * 16)  # no deepstack mergers in Qwen3.5
    return transformers.Qwen3_5Config(text_config=text, vision_config=vision, **token_ids,
                                      tie_word_embeddings=False)


def _build_config(kind, tokenizer, *, text_hidden, text_layers, vision_hidden, vision_depth,
                  patch, merge):
    import transformers

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = int(math.ceil(len(tokenizer) / 64) * 64)
    heads = max(1, text_hidden // 32)  # head_dim 32
    kv_heads = heads // 2 if heads % 2 == 0 else heads
    head_dim = text_hidden // heads
    vision_heads = max(1, vision_hidden // 16)
    rope = {
        "rope_type": "default",
        "rope_theta": 5_000_000.0 if kind == "qwen3-vl" else 1_000_000.0,
        "mrope_section": _mrope_section(head_dim, kind),
    }
    text = dict(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        dtype="float32",
    )
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if kind == "qwen3.5":
        config = _qwen35_config(tokenizer, text, token_ids, text_hidden=text_hidden,
                                text_layers=text_layers, vision_hidden=vision_hidden,
                                vision_depth=vision_depth, patch=patch, merge=merge)
    elif kind == "qwen3-vl":
        rope["mrope_interleaved"] = True
        text.update(head_dim=head_dim, rope_parameters=rope)
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_heads=vision_heads,
            patch_size=patch,
            spatial_merge_size=merge,
            temporal_patch_size=2,
            out_hidden_size=text_hidden,
            num_position_embeddings=16 * 16,  # a perfect square: a 16x16 grid of patches
            deepstack_visual_indexes=[0] if vision_depth > 1 else [],
        )
        config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids,
                                            tie_word_embeddings=False)
    elif kind == "qwen2.5-vl":
        text.update(rope_parameters=rope)
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_heads=vision_heads,
            patch_size=patch,
            spatial_merge_size=merge,
            temporal_patch_size=2,
            out_hidden_size=text_hidden,
            window_size=patch * merge * 4,  # 4x4 merged tokens per attention window
            fullatt_block_indexes=[vision_depth - 1],
        )
        config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                                               **token_ids, tie_word_embeddings=False)
    else:
        text.update(rope_parameters=rope)
        vision = dict(
            depth=vision_depth,
            embed_dim=vision_hidden,
            hidden_size=text_hidden,
            mlp_ratio=2,
            num_heads=vision_heads,
            patch_size=patch,
            spatial_merge_size=merge,
            temporal_patch_size=2,
        )
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **token_ids,
                                            tie_word_embeddings=False)
    config.bos_token_id = None
    config.eos_token_id = ids[EOS_TOKEN]
    config.pad_token_id = ids[PAD_TOKEN]
    config.dtype = "float32"
    return config
