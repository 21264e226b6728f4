"""Loading the student (hub id or local folder), its processor with a pixel budget, LoRA targets.

What differs per family (model type, visual-token size, where the LoRA targets live, chat-template
quirks) is read from the table in core/families.py.

Shared by training and evaluation so that both see the same model, the same image resolution
and the same visual-token count. Heavy imports (torch, transformers, peft) happen inside the
functions.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError
from .families import FAMILIES, Family, family, family_of_type

# config.model_type -> kind, from the table of families (core/families.py)
KINDS: dict[str, str] = {f.model_type: f.kind for f in FAMILIES}

# Real Qwen3-VL allows up to 16M pixels per image; cap the default at 1024x1024 (1024 tokens).
DEFAULT_MAX_PIXELS = 1024 * 1024


def model_family(config_or_model: Any) -> Family:
    """The family row of a config, a model (or PeftModel) or a config dict."""
    config = getattr(config_or_model, "config", config_or_model)
    model_type = getattr(config, "model_type", None)
    if model_type is None and isinstance(config, dict):
        model_type = config.get("model_type")
    return family_of_type(model_type)


def model_kind(config_or_model: Any) -> str:
    """The family's kind (``"qwen3-vl"``, ``"qwen3.5"``, ...) from a config or a model."""
    return model_family(config_or_model).kind


def visual_token_factor(kind: str) -> int:
    """Pixels per side of one merged visual token (patch size x spatial merge)."""
    return family(kind).visual_token_factor


def source_family(source: str | Path) -> Family | None:
    """The family of a model folder or hub id by its config, read before any weights.

    None where there is no model config to read (a run folder, a processor-only folder); an
    unsupported model type is a UserError naming the families.
    """
    path = Path(str(source)).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            return None
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError) as e:
            raise UserError(f"{config}: not a readable model config ({e})") from e
        return family_of_type(model_type, where=str(source))
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(str(source)).model_type
    except (OSError, ValueError) as e:
        raise _load_error(source, str(source), e, what="model config") from e
    return family_of_type(model_type, where=str(source))


def with_template_prelude(template: str | None, fam: Family) -> str | None:
    """The chat template with the family's prelude in front (once: already there, unchanged)."""
    if not fam.template_prelude or template is None or template.startswith(fam.template_prelude):
        return template
    return fam.template_prelude + template


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
    fam = source_family(source)  # an unsupported model type fails here, before anything loads
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, source, e, what="processor") from e
    if fam is not None:  # the family's chat-template quirks (a run folder saved them already)
        for holder in (processor, getattr(processor, "tokenizer", None)):
            if getattr(holder, "chat_template", None) is not None:
                holder.chat_template = with_template_prelude(holder.chat_template, fam)
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
    source_family(source)  # an unsupported model type fails before its weights load
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, source, e, what="model") from e
    model_kind(model)  # a clear error for a model that is not in the table of families
    if "device_map" not in kwargs:
        model = model.to(device)
    return model


# --------------------------------------------------------------------------- LoRA


def lora_target_modules(model: Any, *, tune_vision: bool = False, tune_merger: bool = False) -> str:
    """A regex for peft's ``target_modules`` (matched with ``re.fullmatch`` on module names).

    The model's family row (core/families.py) says where its parts live: the language model's
    decoder-block linear layers (attention, Qwen3.5's linear attention, MLP); with
    ``tune_vision`` also the vision encoder blocks' linear layers; with ``tune_merger`` the
    merger (the vision -> language projection). The patch embedding is never targeted. Checked
    against ``model``: raises UserError if a part it should select has no linear layer.
    """
    import torch

    fam = model_family(model)
    parts = [fam.language_layers] + ([fam.vision_blocks] if tune_vision else []) \
        + ([fam.merger] if tune_merger else [])
    pattern = "|".join(f"(?:{p})" for p in parts)
    language = vision = merger = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if re.fullmatch(fam.language_layers, name):
            language += 1
        elif tune_vision and re.fullmatch(fam.vision_blocks, name):
            vision += 1
        elif tune_merger and re.fullmatch(fam.merger, name):
            merger += 1
    if language == 0:
        raise UserError(
            f"no language-model linear layers found to adapt in {type(model).__name__}; "
            f"is this a {fam.kind} model?"
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

    model_kind(config)  # a clear error for a config outside the table of families
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


# --------------------------------------------------------------------------- inference (eval, predict)

CPU_GENERATION_BATCH = 4  # on the CPU: the batch eval and predict have always used
MAX_GENERATION_BATCH = 32  # more rarely helps: per-token latency grows, the views dominate memory
GPU_MEMORY_SHARE = 0.7  # of the memory free after loading; the rest for fragmentation and the unknown
TEXT_TOKENS = 800  # the question, the chat template and the options besides the views


def load_for_inference(base_model: str | Path, adapter: str | Path | None = None, *, load_in_4bit: bool = False,
                       merge: bool | None = None) -> tuple[Any, dict]:
    """The student for generation: the base model and, if given, the adapter; returns
    ``(model, info)``, ``info`` for summary.json (``lora_merged``, and why).

    ``merge`` None: merged on CUDA (bf16), where an unmerged LoRA costs two extra small matmuls
    per adapted layer and token (7 per block, 36 blocks at 8B) on every decode step; left as an
    adapter on the CPU (the answers stay those of earlier versions, bit for bit) and on a 4-bit
    base (merging would need the weights dequantised). Merged, the answers are the same up to
    the rounding of W + BA in the weights' dtype (exactly the same in fp32: tests/test_inference.py).
    """
    model = load_model(base_model, load_in_4bit=load_in_4bit)
    if adapter is None:
        return model, {"lora_merged": False, "why": "no adapter"}
    model = load_adapter(model, adapter)
    cuda = next(model.parameters()).is_cuda
    if merge is None:
        merge = cuda and not load_in_4bit
    if not merge:
        why = ("4-bit base: merging would dequantise it" if load_in_4bit else
               "not on CUDA: kept as an adapter" if not cuda else "merge=False")
        return model, {"lora_merged": False, "why": why}
    return merge_lora(model), {"lora_merged": True, "why": "CUDA: LoRA merged into the weights at load"}


def merge_lora(model):
    """A PeftModel with one LoRA adapter -> the plain model with ``W + (alpha/r) B A`` in its weights."""
    return model.merge_and_unload()


def per_sample_bytes(config: Any, *, views: int, max_pixels: int, new_tokens: int, dtype_bytes: int = 2) -> int:
    """GPU memory one generated sequence takes beyond the weights: its KV cache (prompt + new
    tokens, every layer) and the prefill's transient activations (the decoder's MLP and the
    vision tower's, over its prompt), from the model's config. An estimate, not a measurement."""
    text = getattr(config, "text_config", config)
    vision = getattr(config, "vision_config", None)
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    patch = getattr(vision, "patch_size", 14) if vision is not None else 14
    merge = getattr(vision, "spatial_merge_size", 2) if vision is not None else 2
    patches = views * max_pixels // (patch * patch)
    prompt = patches // (merge * merge) + TEXT_TOKENS
    kv = 2 * layers * kv_heads * head_dim * dtype_bytes * (prompt + new_tokens)
    decoder = prompt * (3 * text.intermediate_size + 4 * text.hidden_size) * dtype_bytes
    v_inter = (getattr(vision, "intermediate_size", None)
               or getattr(vision, "embed_dim", 0) * getattr(vision, "mlp_ratio", 4)) if vision is not None else 0
    tower = patches * 3 * int(v_inter) * dtype_bytes
    return int(kv + decoder + tower)


def choose_batch_size(model: Any, *, views: int, max_pixels: int, new_tokens: int,
                      free_bytes: int | None = None) -> tuple[int, dict]:
    """A generation batch from the GPU memory free after loading (``free_bytes``; None: asks
    CUDA): GPU_MEMORY_SHARE of it over :func:`per_sample_bytes`, 1 to MAX_GENERATION_BATCH."""
    if free_bytes is None:
        import torch

        free_bytes = torch.cuda.mem_get_info(next(model.parameters()).device)[0]
    each = per_sample_bytes(model.config, views=views, max_pixels=max_pixels, new_tokens=new_tokens,
                            dtype_bytes=max(2, next(model.parameters()).element_size()))
    batch = max(1, min(MAX_GENERATION_BATCH, int(GPU_MEMORY_SHARE * free_bytes // each)))
    return batch, {"free_gib": round(free_bytes / 2**30, 2), "per_sample_gib": round(each / 2**30, 3)}


def generation_batch(model: Any, given: int | None, *, views: int, max_pixels: int,
                     new_tokens: int) -> tuple[int, dict]:
    """(batch size, what chose it): ``given``, else from GPU memory on CUDA, else CPU_GENERATION_BATCH."""
    if given is not None:
        return given, {"batch_size": given, "chosen_from": "given"}
    if not next(model.parameters()).is_cuda:
        return CPU_GENERATION_BATCH, {"batch_size": CPU_GENERATION_BATCH, "chosen_from": "cpu default"}
    batch, info = choose_batch_size(model, views=views, max_pixels=max_pixels, new_tokens=new_tokens)
    return batch, {"batch_size": batch, "chosen_from": "gpu memory", **info}
