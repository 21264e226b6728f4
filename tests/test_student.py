"""The offline kit's tiny students: build fast, load with the ordinary calls, train-ready."""

from __future__ import annotations

import math
import time

import pytest

from connectodistill.core.conversation import build_messages, build_prompt, target_text
from connectodistill.core.errors import UserError
from connectodistill.core.families import family, kinds
from connectodistill.core.modeling import with_template_prelude

KINDS = kinds()  # every family of the table (core/families.py)
ROW = {"species": "mouse", "xmin": 151234.5, "ymin": 200000.25, "zmin": 180000.0,
       "xmax": 412345.0, "ymax": 530000.5, "zmax": 420000.75}
ANALYSIS = "One large soma body is visible with several processes extending from it."


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    from connectodistill.synthetic import make_tiny_student

    root = tmp_path_factory.mktemp("students")
    out = {}
    for kind in KINDS:
        t0 = time.perf_counter()
        path = make_tiny_student(root / kind, kind=kind)
        out[kind] = (path, time.perf_counter() - t0)
    return out


@pytest.fixture(scope="module")
def loaded(students):
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    return {
        kind: (
            AutoModelForImageTextToText.from_pretrained(path).eval(),
            AutoProcessor.from_pretrained(path),
            AutoTokenizer.from_pretrained(path),
        )
        for kind, (path, _) in students.items()
    }


def _images(n=3, size=64):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _messages(with_target=True):
    return build_messages(build_prompt(ROW), target_text("a", ANALYSIS) if with_target else None)


@pytest.mark.parametrize("kind", KINDS)
def test_builds_in_seconds_with_all_files(students, kind):
    path, seconds = students[kind]
    assert seconds < 10, f"{kind} took {seconds:.1f} s"
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "processor_config.json", "generation_config.json"} <= names
    assert sum(p.stat().st_size for p in path.iterdir()) < 20e6


def test_second_build_is_fast_and_seeded(tmp_path, students):
    from safetensors.torch import load_file

    from connectodistill.synthetic import make_tiny_student

    t0 = time.perf_counter()
    again = make_tiny_student(tmp_path / "again", kind="qwen3-vl", seed=0)
    assert time.perf_counter() - t0 < 5
    other = make_tiny_student(tmp_path / "other", kind="qwen3-vl", seed=1)
    a = load_file(students["qwen3-vl"][0] / "model.safetensors")
    b = load_file(again / "model.safetensors")
    c = load_file(other / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert any(not (a[k] == c[k]).all() for k in a)


def test_unknown_kind_is_a_user_error(tmp_path):
    from connectodistill.synthetic import make_tiny_student

    with pytest.raises(UserError, match="qwen3-vl"):
        make_tiny_student(tmp_path / "x", kind="llava")


@pytest.mark.parametrize("kind", KINDS)
def test_ordinary_loaders_and_classes(loaded, kind):
    model, processor, tokenizer = loaded[kind]
    fam = family(kind)
    assert type(model).__name__ == fam.model_class
    assert type(processor).__name__ == fam.processor_class
    assert type(tokenizer).__name__ == type(processor.tokenizer).__name__ == fam.tokenizer_class
    assert model.config.model_type == fam.model_type
    assert model.config.tie_word_embeddings is False
    assert next(model.parameters()).dtype.is_floating_point
    assert str(next(model.parameters()).dtype) == "torch.float32"


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_bit_identical(students, loaded, kind, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    path = students[kind][0]
    model, processor, _ = loaded[kind]
    # Qwen2/2.5-VL checkpoints are written with the legacy key names (model.layers.*,
    # visual.*), so compare the tensors as a multiset rather than by name.
    def canonical(tensors):
        return sorted(tensors, key=lambda t: (tuple(t.shape), t.double().sum().item(), t.double().abs().sum().item()))

    on_disk = canonical(load_file(path / "model.safetensors").values())
    in_memory = canonical(model.state_dict().values())
    assert len(on_disk) == len(in_memory)
    assert all(torch.equal(a, b) for a, b in zip(on_disk, in_memory, strict=True))

    model.save_pretrained(tmp_path / "copy")
    copy = AutoModelForImageTextToText.from_pretrained(tmp_path / "copy").eval()
    text = processor.apply_chat_template(_messages(), tokenize=False)
    batch = processor(text=[text], images=_images(), return_tensors="pt")
    with torch.no_grad():
        a = model(**batch).logits
        b = copy(**batch).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_with_three_images_gives_finite_loss(loaded, kind):
    import torch

    model, processor, tokenizer = loaded[kind]
    text = processor.apply_chat_template(_messages(), tokenize=False)
    batch = processor(text=[text], images=_images(), return_tensors="pt")
    assert {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"} <= set(batch)
    ids = batch["input_ids"][0]
    n_image_tokens = int((ids == model.config.image_token_id).sum())
    assert n_image_tokens == 3 * 4  # 64 px views -> 2x2 merged tokens each
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 3

    prompt = processor.apply_chat_template(_messages(False), tokenize=False, add_generation_prompt=True)
    n_prompt = len(processor(text=[prompt], images=_images(), return_tensors="pt")["input_ids"][0])
    labels = batch["input_ids"].clone()
    labels[:, :n_prompt] = -100
    assert (labels != -100).sum() > 5
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    # the vocabulary is tiny, so a random model's loss is about log(vocab)
    assert out.loss.item() < 2 * math.log(model.config.get_text_config().vocab_size)


# What the generation prompt ends with once load_processor has put the family's prelude in front.
ASSISTANT = {"qwen3.5": "<|im_start|>assistant\n<think>\n\n</think>\n\n"}


@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_prefix_property(loaded, kind):
    _, processor, tokenizer = loaded[kind]
    target = target_text("a", ANALYSIS)
    for renderer in (processor, tokenizer):
        template = with_template_prelude(renderer.chat_template, family(kind))
        full = renderer.apply_chat_template(_messages(), tokenize=False, chat_template=template)
        prompt = renderer.apply_chat_template(_messages(False), tokenize=False, add_generation_prompt=True,
                                              chat_template=template)
        assert full.startswith(prompt)
        assert full[len(prompt):] == target + "<|im_end|>\n"
        assert prompt.startswith("<|im_start|>user\n")  # no default system prompt
        assert prompt.endswith("<|im_end|>\n" + ASSISTANT.get(kind, "<|im_start|>assistant\n"))
        assert "system" not in prompt
        assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 3
        assert prompt.count("<|image_pad|>") == 3


@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_string_content_and_system(loaded, kind):
    _, processor, _ = loaded[kind]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}]
    think = "<think>\n\n</think>\n\n" if kind == "qwen3.5" else ""  # the last answer's empty block
    assert processor.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        f"<|im_start|>assistant\n{think}Hello<|im_end|>\n"
    )


def test_qwen35_template_thinks_unless_told_not_to(loaded):
    """The kit's Qwen3.5 template has the real one's quirk: its generation prompt opens a think
    block (4B and larger), so the prompt is no prefix of the conversation until thinking is off,
    which the family's prelude does for every caller of load_processor."""
    _, processor, tokenizer = loaded["qwen3.5"]
    target = target_text("a", ANALYSIS)
    render = processor.apply_chat_template
    prompt = render(_messages(False), tokenize=False, add_generation_prompt=True)
    full = render(_messages(), tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n") and not full.startswith(prompt + target)
    off = render(_messages(False), tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert full.startswith(off) and full[len(off):] == target + "<|im_end|>\n"
    # an earlier answer has no think block; reasoning fills the last one's
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"},
            {"role": "user", "content": "And?"}, {"role": "assistant", "content": "B", "reasoning_content": "r"}]
    assert render(msgs, tokenize=False).endswith(
        "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nr\n</think>\n\nB<|im_end|>\n")
    assert tokenizer.tokenize("<think></think>") == ["<think>", "</think>"]  # one added token each
    assert "<think>" not in tokenizer.all_special_tokens  # kept by skip_special_tokens, as Qwen's


def test_assistant_tokens_mask(loaded):
    _, _, tokenizer = loaded["qwen3-vl"]
    enc = tokenizer.apply_chat_template(_messages(), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert len(ids) == len(mask) and sum(mask) > 0
    masked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == target_text("a", ANALYSIS) + "<|im_end|>"
    # the mask starts right after the assistant header
    header = tokenizer.encode("<|im_start|>assistant\n")
    start = mask.index(1)
    assert ids[start - len(header):start] == header


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_ids_match_config(loaded, kind):
    model, processor, tokenizer = loaded[kind]
    config = model.config
    text = config.get_text_config()
    tid = tokenizer.convert_tokens_to_ids
    assert config.image_token_id == tid("<|image_pad|>") == processor.image_token_id
    assert config.video_token_id == tid("<|video_pad|>")
    assert config.vision_start_token_id == tid("<|vision_start|>")
    assert config.vision_end_token_id == tid("<|vision_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert text.eos_token_id == tokenizer.eos_token_id == model.generation_config.eos_token_id
    assert text.pad_token_id == tokenizer.pad_token_id == model.generation_config.pad_token_id
    assert getattr(text, "bos_token_id", None) is None and tokenizer.bos_token is None
    assert text.vocab_size >= len(tokenizer)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"):
        assert token in tokenizer.all_special_tokens
        assert tokenizer.tokenize(f"a{token}b") == ["a", token, "b"]


def test_tokenizer_is_compact(loaded):
    _, _, tokenizer = loaded["qwen3-vl"]
    assert 500 <= len(tokenizer) <= 2100
    n = len(tokenizer(build_prompt(ROW))["input_ids"])
    assert n < 400, n
    for word in (" connectomics", " segment", " soma", " dendrites", " nucleus", " the"):
        assert len(tokenizer.tokenize(word)) == 1, (word, tokenizer.tokenize(word))
    for tag in ("<analysis>", "</analysis>", "<answer>", "</answer>"):
        assert len(tokenizer.tokenize(tag)) <= 3, (tag, tokenizer.tokenize(tag))
    text = target_text("c", "Only thin branching processes are visible, with no cell body anywhere.")
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # bytes outside the corpus still round-trip (byte-level BPE)
    odd = "Zebrafish µm — ünïcödé 😀"
    assert tokenizer.decode(tokenizer(odd)["input_ids"]) == odd


def test_image_budget_gives_four_tokens_per_64px_view(loaded):
    for kind, (model, processor, _) in loaded.items():
        factor = 32 if kind in ("qwen3-vl", "qwen3.5") else 28
        ip = processor.image_processor
        assert ip.patch_size * ip.merge_size == factor == family(kind).visual_token_factor
        assert ip.patch_size == model.config.vision_config.patch_size
        assert ip.merge_size == model.config.vision_config.spatial_merge_size
        assert ip.size["shortest_edge"] <= (2 * factor) ** 2 <= ip.size["longest_edge"]
        if factor == 32:
            assert ip.size["shortest_edge"] == ip.size["longest_edge"] == 64 * 64
        # any square view, small or large, becomes the same 2x2 merged tokens
        for size in (20, 48, 64, 75, 100, 200, 300, 1000):
            out = processor.image_processor(_images(1, size), return_tensors="pt")
            assert out["image_grid_thw"].tolist() == [[1, 4, 4]], (kind, size)


def test_other_image_sizes(tmp_path):
    from transformers import AutoProcessor

    from connectodistill.synthetic import make_tiny_student

    for kind, image_size, tokens in (("qwen3-vl", 96, 9), ("qwen2-vl", 112, 16)):
        path = make_tiny_student(tmp_path / kind, kind=kind, image_size=image_size,
                                 text_hidden=64, text_layers=1, vision_hidden=32, vision_depth=1)
        ip = AutoProcessor.from_pretrained(path).image_processor
        for size in (image_size, 50, 150, 333, 1024):
            grid = ip(_images(1, size), return_tensors="pt")["image_grid_thw"]
            assert int(grid.prod()) // 4 == tokens, (kind, size)


@pytest.mark.parametrize("kind", KINDS)
def test_rotary_sections_cover_the_rotated_dimensions(loaded, kind):
    """transformers clips a wrong mrope_section silently: the kit's must sum to the rotated
    half-dimensions (Qwen3.5 rotates a quarter of head_dim, Qwen-VL all of it)."""
    model, _, _ = loaded[kind]
    text = model.config.get_text_config()
    rope = text.rope_parameters
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert sum(rope["mrope_section"]) == int(head_dim * rope.get("partial_rotary_factor", 1.0)) // 2
    if kind == "qwen3.5":  # the hybrid decoder: both token mixers, no deepstack mergers
        assert set(text.layer_types) == {"linear_attention", "full_attention"}
        assert text.layer_types[-1] == "full_attention"
        assert not hasattr(model.model.visual, "deepstack_merger_list")
