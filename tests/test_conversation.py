"""One conversation builder for training and evaluation."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from connectodistill.core.conversation import (
    PROMPT_TEMPLATE_ID,
    build_messages,
    build_prompt,
    load_image,
    load_images,
    prompt_template_hash,
    target_text,
)
from connectodistill.core.errors import UserError
from connectodistill.core.task import CLASSES

ROW = {"species": "mouse", "proofread_root_id": 864691134965949727, "current_root_id": 864691134965949728,
       "xmin": 100000.5, "ymin": 200000.0, "zmin": 30000.0, "xmax": 112000.5, "ymax": 209500.0, "zmax": 36000.0}


def _png(color=(10, 20, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_prompt_has_species_box_options_and_tags():
    p = build_prompt(ROW)
    assert "mouse" in p
    assert "12000 x 9500 x 6000 nm" in p
    for letter, desc in CLASSES.items():
        assert f"{letter}) {desc}" in p
    assert "<analysis></analysis>" in p and "<answer></answer>" in p


def test_guidance_paragraph_is_optional():
    with_g, without_g = build_prompt(ROW, with_description=True), build_prompt(ROW, with_description=False)
    assert len(with_g) > len(without_g)
    assert "visual cortex" in with_g and "visual cortex" not in without_g


def test_template_identity_is_stable():
    assert PROMPT_TEMPLATE_ID == "segment-classification-v1"
    assert prompt_template_hash() == prompt_template_hash()
    assert len(prompt_template_hash()) == 16


def test_target_text_uses_teacher_analysis_or_template():
    assert target_text("c", "Only thin branches.") == "<analysis>Only thin branches.</analysis>\n<answer>c</answer>"
    assert "<answer>d</answer>" in target_text("d", None)
    assert "nucleus" in target_text("d", None)


def test_messages_images_first_then_prompt():
    msgs = build_messages("prompt", "target")
    assert [c["type"] for c in msgs[0]["content"]] == ["image", "image", "image", "text"]
    assert msgs[1]["role"] == "assistant"
    assert len(build_messages("prompt")) == 1


def test_images_from_every_storage_form(tmp_path):
    data = _png()
    path = tmp_path / "v.png"
    path.write_bytes(data)
    for value in (data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, str(path),
                  Image.open(io.BytesIO(data))):
        im = load_image(value)
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (10, 20, 30)


def test_missing_image_names_the_sample():
    row = {**ROW, "a": _png(), "b": None, "c": _png()}
    with pytest.raises(UserError, match="864691134965949727/864691134965949728 column b"):
        load_images(row, ("a", "b", "c"))


def test_blank_images_keep_size():
    row = {**ROW, "a": _png(size=(12, 10)), "b": _png(), "c": _png()}
    ims = load_images(row, ("a", "b", "c"), blank=True)
    assert ims[0].size == (12, 10)
    assert ims[0].getpixel((3, 3)) == (128, 128, 128)
