"""What every converter of an original checkpoint shares: its error type, the short listing of tensor names its
messages show, the Hub push of `--push_to_hub`, and the command-line entry point.

Converters are not copied into saved model folders (only a family's configuration / modeling / image-processing
files are), so they may import from the package.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

from transformers import HfArgumentParser

from ..utils import hub_offline


class ConversionError(ValueError):
    """A checkpoint could not be converted; the message says what was wrong and what to do."""


def name_listing(names, limit: int = 12) -> str:
    """`names` sorted and quoted, at most `limit` of them: `['a', 'b', ... (40 in all)]` (error messages)."""
    names = sorted(map(str, names))
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def push_folder_to_hub(
    output_dir: str | os.PathLike, repo_id: str, log=print, commit_message: str = "Upload LookWhere"
) -> str:
    """Upload a converted folder to the Hub (`create_repo` + `upload_folder`), with clear errors (every converter's
    `--push_to_hub`)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise ConversionError(f"--push_to_hub expects a repo id like 'USER/MODEL_NAME', got {repo_id!r}.")
    later = (
        f"The converted model is complete in {str(output_dir)!r}; upload it later: `hf upload {repo_id} {output_dir}`."
    )
    if hub_offline():
        raise ConversionError(f"Cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE). {later}")
    import huggingface_hub

    try:
        huggingface_hub.create_repo(repo_id, exist_ok=True, repo_type="model")
        huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(output_dir), commit_message=commit_message)
    except Exception as err:  # network, authentication and permission errors all end here
        raise ConversionError(
            f"Pushing to the Hub repo {repo_id!r} failed ({type(err).__name__}: {first_line(err)}). Check your "
            f"network and that you are logged in (`hf auth login`) with write access. {later}"
        ) from None
    url = f"https://huggingface.co/{repo_id}"
    log(f"Pushed {output_dir} to {url}.")
    return url


def run_converter(arguments_class, convert, argv: list[str] | None, description: str) -> int:
    """A converter's command line: parse `argv` into `arguments_class` (a dataclass whose fields are `convert`'s
    arguments, with `skip_self_check` for `run_self_check`), call `convert`, and return the exit status (0 on
    success, 2 on a [`ConversionError`], whose message goes to stderr)."""
    parser = HfArgumentParser(arguments_class, description=description)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    kwargs["run_self_check"] = not kwargs.pop("skip_self_check")
    try:
        convert(kwargs.pop("checkpoint_path"), kwargs.pop("output_dir"), **kwargs)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
