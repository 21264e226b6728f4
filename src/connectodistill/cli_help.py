"""What `--help` shows: every option's default, taken from the command's pydantic config.

The CLI's options default to None (a flag not given leaves the config file's value, else the
config's default), so Typer has no default to show. ``show_defaults`` appends the config's
default as ``[default: X]`` to each option's help that does not state one already (some say
it in words: "the run's"). Plain (non-rich) help keeps the ``[default: ...]`` text, wraps at
the terminal's width and never cuts an option's name.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from pydantic_core import PydanticUndefined

__all__ = ["default_text", "show_defaults"]

# On eval and predict, --gpu and --timeout are the eval call's own (cli.py says so too).
EVAL_REMOTE = {"gpu": "eval_gpu", "timeout": "eval_timeout"}


def default_text(value) -> str | None:
    """How a config default reads in help; None where there is nothing to show (off, unset)."""
    if value is None or value is False or value is PydanticUndefined or value in ([], {}, ""):
        return None
    if value is True:
        return "on"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)


def config_default(cls, name: str):
    field = cls.model_fields.get(name)
    if field is None:
        return PydanticUndefined
    return field.get_default(call_default_factory=True)


def show_defaults(typer_app, configs: dict[str, type], remote_config: type, remote_flags: tuple[str, ...]) -> None:
    """Append ``[default: X]`` to the help of every option of ``typer_app``'s commands (by
    name in ``configs``) whose config field has a default and whose help names none."""
    from typer.models import OptionInfo

    for command in typer_app.registered_commands:
        name = command.name or command.callback.__name__
        cls = configs.get(name)
        if cls is None:
            continue
        for param_name, param in inspect.signature(command.callback).parameters.items():
            info = param.default
            if not isinstance(info, OptionInfo) or "[default:" in (info.help or ""):
                continue
            field, owner = param_name, cls
            if param_name in remote_flags or param_name in EVAL_REMOTE:
                owner = remote_config
                field = EVAL_REMOTE.get(param_name, param_name) if name in ("eval", "predict") else param_name
            text = default_text(config_default(owner, field))
            if text is not None:
                info.help = f"{(info.help or '').rstrip()}  [default: {text}]"
