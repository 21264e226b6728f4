"""Loading the student (hub id or local folder), its processor with a pixel budget, LoRA targets.

Shared by training and evaluation so that both see the same model, the same image resolution
and the same visual-token count. Heavy imports (torch, transformers, peft) happen inside the
functions.
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError

KINDS: dict[str, str] = {  # config.model_type -> kind
    "qwen3_vl": "qwen3-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen2_vl": "qwen2-vl",
}

# Real Qwen3-VL allows up to 16M pixels per image; cap the default at 1024x1024 (1024 tokens).
DEFAULT_MAX_PIXELS = 1024 * 1024

# Linear layers of the language model's decoder blocks (attention and MLP). In transformers 5
# they live at `model.language_model.layers.N.*` (4.x: `model.layers.N.*`); never under `visual`.
_LANGUAGE_RE = (
    r"(?!.*\bvisual\b)(?:.*\.)?layers\.\d+\."
    r"(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))"
)
# Linear layers of the vision encoder's blocks (not the patch embedding, not the merger):
# attention qkv/proj; MLP fc1/fc2 (Qwen2-VL), gate/up/down_proj (Qwen2.5-VL),
# linear_fc1/linear_fc2 (Qwen3-VL).
_VISION_RE = (
    r"(?:.*\.)?visual\.blocks\.\d+\."
    r"(?:attn\.(?:qkv|proj)"
    r"|mlp\.(?:fc1|fc2|linear_fc1|linear_fc2|gate_proj|up_proj|down_proj))"
)
# The vision -> language projector ("merger", Qwen's `tune_mm_mlp`): mlp.0/mlp.2 (Qwen2/2.5-VL),
# linear_fc1/linear_fc2 plus the deepstack mergers (Qwen3-VL).
_MERGER_RE = r"(?:.*\.)?visual\.(?:merger|deepstack_merger_list\.\d+)\.(?:mlp\.[02]|linear_fc1|linear_fc2)"


def model_kind(config_or_model: Any) -> str:
    """``"qwen3-vl"``, ``"qwen2.5-vl"`` or ``"qwen2-vl"`` from a config or a model (or PeftModel)."""
    config = getattr(config_or_model, "config", config_or_model)
    model_type = getattr(config, "model_type", None)
    if model_type is None and isinstance(config, dict):
        model_type = config.get("model_type")
    if model_type not in KINDS:
        raise UserError(
            f"unsupported model type {model_type!r}: the student must be a Qwen-VL model "
            f"({', '.join(KINDS)}), e.g. Qwen/Qwen3-VL-8B-Instruct"
        )
    return KINDS[model_type]


def visual_token_factor(kind: str) -> int:
    """Pixels per side of one merged visual token (patch size x spatial merge)."""
    if kind not in KINDS.values():
        raise UserError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS.values())}")
    return 32 if kind == "qwen3-vl" else 28


# --------------------------------------------------------------------------- processor


def _size_get(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def load_processor(
    name_or_path: str | Path,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[Any, dict[str, int]]:
    """The model's processor with a pixel budget per image; returns ``(processor, budget)``.

    ``max_pixels`` defaults to the processor's own maximum capped at 1024x1024 (1024 visual
    tokens per view for Qwen3-VL); ``min_pixels`` to the processor's own minimum, clipped to at
    most ``max_pixels``. The budget is written into ``processor.image_processor.size`` so that
    it is used by every call and saved with the processor.
    """
    from transformers import AutoProcessor

    source = _resolve_source(name_or_path, what="processor")
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, source, e, what="processor") from e
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        raise UserError(f"{name_or_path}: the processor has no image processor; is it a vision-language model?")

    size = getattr(image_processor, "size", None)
    own_min = _size_get(size, "shortest_edge") or getattr(image_processor, "min_pixels", None)
    own_max = _size_get(size, "longest_edge") or getattr(image_processor, "max_pixels", None)
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and int(value) < 1:
            raise UserError(f"{name} must be a positive number of pixels, got {value}")
    if max_pixels is None:
        max_pixels = min(int(own_max), DEFAULT_MAX_PIXELS) if own_max else DEFAULT_MAX_PIXELS
    if min_pixels is None:
        min_pixels = min(int(own_min), int(max_pixels)) if own_min else min(56 * 56, int(max_pixels))
    min_pixels, max_pixels = int(min_pixels), int(max_pixels)
    if min_pixels > max_pixels:
        raise UserError(
            f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels}); "
            "lower --min-pixels or raise --max-pixels"
        )

    try:
        from transformers.image_utils import SizeDict

        image_processor.size = SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels)
    except ImportError:  # older transformers: a plain dict
        image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    for attr, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if getattr(image_processor, attr, None) is not None:  # transformers 4.x keeps both
            setattr(image_processor, attr, value)
    return processor, {"min_pixels": min_pixels, "max_pixels": max_pixels}


# --------------------------------------------------------------------------- model

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_local(name: str) -> bool:
    if name.startswith(("./", "../", "/", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    if re.match(r"^[A-Za-z]:[\\/]", name):  # Windows drive
        return True
    if os.sep in name or (os.altsep and os.altsep in name):
        # owner/name is a hub id, unless `owner` is a folder here (demo-run/student)
        return not _HUB_ID.match(name) or Path(name.split("/")[0]).expanduser().is_dir()
    return False


def _resolve_source(name_or_path: str | Path, *, what: str) -> str:
    """A local folder (checked) or a hub id, as the string from_pretrained takes."""
    name = str(name_or_path).strip()
    if not name:
        raise UserError(f"no {what} given: pass a hub id (e.g. Qwen/Qwen3-VL-8B-Instruct) or a local folder")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path {name} is a file; pass the folder that holds config.json")
        return str(path)
    if isinstance(name_or_path, Path) or _looks_local(name):
        raise UserError(f"model folder not found: {name}; pass an existing folder or a hub id")
    return name


def _load_error(name_or_path, source: str, error: Exception, *, what: str) -> UserError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if Path(source).is_dir():
        return UserError(f"could not load the {what} from {source}: {reason}")
    return UserError(
        f"could not load {what} {str(name_or_path)!r} from the Hugging Face Hub: {reason}; "
        "pass a local folder or check network/HF_TOKEN"
    )


def _resolve_dtype(dtype: Any, device: str):
    import torch

    if dtype is not None and not (isinstance(dtype, str) and dtype == "auto"):
        if isinstance(dtype, torch.dtype):
            return dtype
        names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
                 "float": "float32"}
        value = getattr(torch, names.get(str(dtype), str(dtype)), None)
        if not isinstance(value, torch.dtype):
            raise UserError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
        return value
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(
    name_or_path: str | Path,
    *,
    load_in_4bit: bool = False,
    device: str | None = None,
    dtype: Any = None,
):
    """The student model from a hub id or a local folder, on ``device``.

    dtype defaults to bfloat16 on a CUDA GPU that supports it, else float32. ``load_in_4bit``
    quantises to NF4 with bitsandbytes (CUDA only) and places the model with a device map.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    if device is None:
        # Under accelerate/torchrun each process owns the GPU of its LOCAL_RANK.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = str(device)
    kwargs: dict[str, Any] = {}
    if load_in_4bit:
        if not (device.startswith("cuda") and torch.cuda.is_available()):
            raise UserError(
                "--load-in-4bit needs a CUDA GPU (bitsandbytes); drop the flag to train in bf16/fp32"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise UserError(
                "--load-in-4bit needs bitsandbytes: pip install 'connectodistill[gpu]' "
                "(or drop the flag)"
            ) from e
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["device_map"] = {"": device if ":" in device else f"{device}:{torch.cuda.current_device()}"}
        kwargs["dtype"] = compute if dtype is None else _resolve_dtype(dtype, device)
    else:
        kwargs["dtype"] = _resolve_dtype(dtype, device)
        if device.startswith("cuda") and torch.cuda.is_available():
            # Load the weights straight onto the GPU, not into host memory first and then
            # `.to(device)` (an 8B model is 17.5 GB in bf16: that much RAM and a second copy).
            kwargs["device_map"] = {"": device if ":" in device else f"{device}:{torch.cuda.current_device()}"}

    source = _resolve_source(name_or_path, what="model")
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, source, e, what="model") from e
    model_kind(model)  # a clear error for a model that is not a Qwen-VL
    if "device_map" not in kwargs:
        model = model.to(device)
    return model


# --------------------------------------------------------------------------- LoRA


def lora_target_modules(model: Any, *, tune_vision: bool = False, tune_merger: bool = False) -> str:
    """A regex for peft's ``target_modules`` (matched with ``re.fullmatch`` on module names).

    Selects the language model's attention and MLP linear layers; with ``tune_vision`` also the
    vision encoder blocks' attention (qkv, proj) and MLP linear layers; with ``tune_merger`` the
    merger (the vision -> language projection). The patch embedding is never targeted. Checked
    against ``model``: raises UserError if a part it should select has no linear layer.
    """
    import torch

    pattern = (f"(?:{_LANGUAGE_RE})" + (f"|(?:{_VISION_RE})" if tune_vision else "")
               + (f"|(?:{_MERGER_RE})" if tune_merger else ""))
    language = vision = merger = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if re.fullmatch(_LANGUAGE_RE, name):
            language += 1
        elif tune_vision and re.fullmatch(_VISION_RE, name):
            vision += 1
        elif tune_merger and re.fullmatch(_MERGER_RE, name):
            merger += 1
    if language == 0:
        raise UserError(
            f"no language-model linear layers found to adapt in {type(model).__name__}; "
            "is this a Qwen-VL model?"
        )
    if tune_vision and vision == 0:
        raise UserError(f"--tune-vision: no vision-block linear layers found in {type(model).__name__}")
    if tune_merger and merger == 0:
        raise UserError(f"--tune-merger: no merger linear layers found in {type(model).__name__}")
    return pattern


def add_lora(
    model: Any,
    *,
    r: int,
    alpha: float,
    dropout: float,
    tune_vision: bool = False,
    tune_merger: bool = False,
    gradient_checkpointing: bool = False,
):
    """Wrap ``model`` in a peft LoRA model (language model; vision blocks with ``tune_vision``)."""
    from peft import LoraConfig, get_peft_model

    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    if gradient_checkpointing:
        model.config.use_cache = False
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=lora_target_modules(model, tune_vision=tune_vision, tune_merger=tune_merger),
        bias="none",
    )
    with quiet_checkpointing_alias():
        return get_peft_model(model, config)


@contextmanager
def quiet_checkpointing_alias():
    """peft and TRL ask the model ``is_gradient_checkpointing``, an alias transformers 5 deprecated
    (peft_model.py: ``getattr(model, "is_gradient_checkpointing", True)``; trl/models/utils.py
    when it generates): a FutureWarning on every train and eval that the user can do nothing
    about. Only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_adapter(model: Any, path: str | Path, **kwargs):
    """``PeftModel.from_pretrained(model, path, **kwargs)``, without peft's deprecation noise."""
    from peft import PeftModel

    with quiet_checkpointing_alias():
        return PeftModel.from_pretrained(model, str(path), **kwargs)


# --------------------------------------------------------------------------- shape-only builds


def build_model_from_config(config: Any, *, device: str | None = None, dtype: Any = None):
    """A randomly-initialised student of ``config``'s architecture, allocated directly on ``device``.

    Nothing is read from disk or the Hub: for benchmarks and tests of a real model's shape
    (e.g. Qwen3-VL-8B-Instruct's published config) without its checkpoint. ``config`` is a
    transformers config or a dict with ``model_type``; ``device="meta"`` allocates nothing
    (parameter counts). Same device and dtype defaults as :func:`load_model` (bfloat16 on a
    CUDA GPU that supports it, else float32), and like ``from_pretrained`` the model is
    returned in eval mode.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    model_kind(config)  # a clear error for anything but a Qwen-VL config
    if isinstance(config, dict):
        config = dict(config)
        config = AutoConfig.for_model(config.pop("model_type"), **config)
    if device is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = str(device)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=_resolve_dtype(dtype, device))
    return model.eval()
