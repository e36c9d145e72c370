"""Hub model cards for LookWhere folders: the template, the facts about the official releases, and rendering.

The template ships inside the package (`lookwhere_hf/templates/model_card.md`), so cards render from an installed
wheel too. The converter writes a card into every folder it converts; the cards of the two official releases in the
repository's `model_cards/` folder are regenerated with

```bash
python -m lookwhere_hf.model_cards --output_dir model_cards
```
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import string
import sys
from importlib import resources
from pathlib import Path

from .flops import flops_table, mlp_width
from .models.lookwhere.configuration_lookwhere import EXTRACTOR_DEFAULTS, SELECTOR_DEFAULTS, LookWhereConfig

__all__ = [
    "ORIGINAL_REPO",
    "ORIGINAL_WEIGHTS",
    "PAPER",
    "RELEASE_CARDS",
    "VARIANT_INFO",
    "architecture_table",
    "conversion_provenance",
    "release_config",
    "render_model_card",
    "write_release_cards",
]

ORIGINAL_REPO = "https://github.com/antofuller/lookwhere"
ORIGINAL_WEIGHTS = "https://huggingface.co/antofuller/lookwhere"
PAPER = "https://arxiv.org/abs/2505.18051"
CONVERTER = "python -m lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf"
RELEASE_CARDS = {"dinov2": "lookwhere-dinov2-vitb14.md", "franca": "lookwhere-franca-vitb14.md"}
TAGS = [
    "lookwhere",
    "vision",
    "image-feature-extraction",
    "vit",
    "adaptive-computation",
    "token-selection",
    "distillation",
]

# Facts about the two official releases (and the fallback for other checkpoints in their layout).
VARIANT_INFO = {
    "dinov2": {
        "title": "LookWhere-DINOv2",
        "teacher": "DINOv2 with registers",
        "base_model": "antofuller/lookwhere",
        "checkpoint": "lookwhere_dinov2.pt",
        "tags": ["dinov2"],
        "description": (
            "This variant was distilled from DINOv2 with registers: GELU MLPs, 4 register tokens, so the selector "
            "hands CLS + 4 registers to the extractor. The authors report it as the stronger of their two released "
            "models."
        ),
    },
    "franca": {
        "title": "LookWhere-Franca",
        "teacher": "Franca",
        "base_model": "antofuller/lookwhere",
        "checkpoint": "lookwhere_franca.pt",
        "tags": ["franca"],
        "description": (
            "This variant was distilled from Franca: SwiGLU MLPs and no register tokens, so the selector hands only "
            "its CLS token to the extractor. The authors report LookWhere-DINOv2 as the stronger of their two released "
            "models."
        ),
    },
    "custom": {
        "title": "LookWhere",
        "teacher": "a self-supervised ViT",
        "base_model": None,  # not one of the official releases: no known base model
        "checkpoint": "a LookWhere checkpoint",
        "tags": [],
        "description": (
            "This checkpoint does not match either official release layout; its architecture is listed below."
        ),
    },
}


def _template() -> str:
    return resources.files("lookwhere_hf").joinpath("templates", "model_card.md").read_text(encoding="utf-8")


def architecture_table(config: LookWhereConfig) -> str:
    """Markdown table of the selector's and the extractor's architecture."""
    sel, ext = config.selector_config, config.extractor_config

    def mlp(cfg) -> str:
        width = mlp_width(cfg.hidden_size, cfg.mlp_ratio, cfg.use_swiglu_ffn)
        return f"{'SwiGLU' if cfg.use_swiglu_ffn else 'GELU'}, width {width}"

    size, high = config.low_res_size, config.high_res_size
    rows = [
        "| | selector | extractor |",
        "|---|---|---|",
        f"| input | {size}x{size} (low-res view) | any multiple of {config.patch_size} "
        f"(position embeddings trained at {high}x{high}) |",
        f"| layers | {sel.num_hidden_layers} | {ext.num_hidden_layers} |",
        f"| hidden size / heads | {sel.hidden_size} / {sel.num_attention_heads} | "
        f"{ext.hidden_size} / {ext.num_attention_heads} |",
        f"| MLP | {mlp(sel)} | {mlp(ext)} |",
        f"| CLS + registers | 1 + {sel.num_register_tokens} | seeded by the selector's |",
        f"| head | MLP {sel.hidden_size} -> {4 * sel.hidden_size} -> {config.selector_upsample_factor**2} "
        f"(exact GELU) per low-res patch | none (features) |",
    ]
    return "\n".join(rows)


def _vit_name(config: LookWhereConfig) -> str:
    """ "ViT-B/14" and the like for the extractor's size."""
    sizes = {(384, 12): "S", (768, 12): "B", (1024, 24): "L", (1536, 40): "g"}
    ext = config.extractor_config
    size = sizes.get((ext.hidden_size, ext.num_hidden_layers))
    if size is None:
        return f"ViT, hidden {ext.hidden_size}, depth {ext.num_hidden_layers}, patch {config.patch_size}"
    return f"ViT-{size}/{config.patch_size}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def conversion_provenance(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    high_res: int,
    k_ratio: float,
    variant: str,
    num_source_tensors: int,
    swiglu: bool,
) -> str:
    """The card's "Conversion provenance" section for a converted file: its hash and size, the versions and the
    command used, and what the converter checked."""
    import torch
    import transformers

    from . import __version__

    path = Path(checkpoint_path)
    split = "timm's fused `qkv` split into q/k/v"
    if swiglu:
        split += ", the packed SwiGLU `fc1` split into gate then value halves"
    return (
        f"Converted from `{path.name}` (sha256 `{_sha256(path)}`, {path.stat().st_size:,} bytes; official weights: "
        f"{ORIGINAL_WEIGHTS}) on {datetime.date.today().isoformat()} with lookwhere_hf {__version__}, transformers "
        f"{transformers.__version__}, torch {torch.__version__}:\n\n"
        "```bash\n"
        f"{CONVERTER} --checkpoint_path {path.name} --output_dir {Path(output_dir).name} --high_res {high_res} "
        f"--k_ratio {k_ratio:g} --variant {variant}\n"
        "```\n\n"
        f"All {num_source_tensors} source tensors were mapped ({split}, tensors stored in float32); the converter "
        "refuses to write a model if any tensor is left over or any parameter is left empty. Numerical parity with the "
        "official timm-based forward is tested in `tests/test_conversion.py` of lookwhere_hf (max abs error <= 1e-4 in "
        "float32)."
    )


def _release_provenance(variant: str, repo_id: str) -> str:
    checkpoint = VARIANT_INFO[variant]["checkpoint"]
    return (
        f"Converted from the official `{checkpoint}` ({ORIGINAL_WEIGHTS}) with\n\n"
        "```bash\n"
        f"{CONVERTER} --checkpoint_path {checkpoint} --output_dir {repo_id.split('/')[-1]} "
        f"--variant {variant if variant != 'custom' else 'auto'}\n"
        "```\n\n"
        "The converter maps every tensor of the original file (and refuses to write a model if any tensor is "
        "left over or any parameter is left empty), then reloads the folder and runs a forward pass on a real "
        "photo. Its numerical parity with the official timm-based forward (selector map, selected patches, CLS, "
        "dense features; max abs error <= 1e-4 in float32) is tested in `tests/test_conversion.py`."
    )


def render_model_card(
    config: LookWhereConfig,
    variant: str,
    repo_id: str = "USER/lookwhere",
    provenance: str | None = None,
    high_res: int | None = None,
    template_path: str | os.PathLike | None = None,
) -> str:
    """Fill the model card template for a LookWhere model.

    Args:
        config ([`LookWhereConfig`]): the model's configuration (architecture table, FLOPs table, defaults).
        variant (`str`): "dinov2", "franca" or "custom" (a checkpoint that is neither release).
        repo_id (`str`): the Hub repo id used in the usage snippets.
        provenance (`str`, *optional*): markdown describing the conversion ([`conversion_provenance`]); a note on how
            the official file converts if None.
        high_res (`int`, *optional*): the image processor's default input size; `config.high_res_size` if None.
        template_path (*optional*): a template to fill instead of the one shipped in the package.

    Returns:
        `str`: the card (YAML metadata + markdown).
    """
    if variant not in VARIANT_INFO:
        raise ValueError(f"`variant` must be one of {sorted(VARIANT_INFO)}, got {variant!r}.")
    if template_path is None:
        template, source = _template(), "lookwhere_hf/templates/model_card.md"
    else:
        source = str(template_path)
        if not Path(source).is_file():
            raise ValueError(f"Model card template {source!r} does not exist; pass an existing markdown file.")
        template = Path(source).read_text(encoding="utf-8")
    info = VARIANT_INFO[variant]
    registers = config.selector_config.num_register_tokens
    values = {
        "title": info["title"],
        "teacher": info["teacher"],
        "base_model_yaml": f"base_model: {info['base_model']}\n" if info["base_model"] else "",
        "checkpoint": info["checkpoint"],
        "repo_id": repo_id,
        "license": "other",
        "license_name": "lookwhere-upstream",
        "license_link": ORIGINAL_REPO,
        "tags_yaml": "\n".join(f"- {tag}" for tag in TAGS + info["tags"]),
        "datasets_yaml": "datasets:\n- ILSVRC/imagenet-1k\n" if variant != "custom" else "",
        "vit_name": _vit_name(config),
        "high_res": str(high_res or config.high_res_size),
        "patch_size": str(config.patch_size),
        "low_res": str(config.low_res_size),
        "pretrain_res": str(config.high_res_size),
        "k_ratio": f"{config.k_ratio:g}",
        "num_prefix": str(config.num_prefix_tokens),
        "prefix_text": f"CLS and {registers} register tokens" if registers else "CLS token",
        "variant_description": info["description"],
        "upsample_factor": str(config.selector_upsample_factor),
        "architecture_table": architecture_table(config),
        "flops_table": flops_table(config),
        "provenance": (provenance or _release_provenance(variant, repo_id)).strip(),
        "original_repo": ORIGINAL_REPO,
        "original_weights": ORIGINAL_WEIGHTS,
        "paper": PAPER,
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"Model card template {source!r} has an unknown or malformed placeholder ({err}); the known ones are "
            f"{sorted(values)}."
        ) from None


def release_config(variant: str) -> LookWhereConfig:
    """The [`LookWhereConfig`] the official `lookwhere_<variant>.pt` converts to (ViT-B/14, selector depth 3 at 154 px,
    extractor depth 12 at 518 px; Franca: SwiGLU MLP, no registers)."""
    if variant not in RELEASE_CARDS:
        raise ValueError(f"`variant` must be one of {sorted(RELEASE_CARDS)}, got {variant!r}.")
    backbone = {} if variant == "dinov2" else {"use_swiglu_ffn": True, "num_register_tokens": 0, "mlp_ratio": 4}
    return LookWhereConfig(
        selector_config={**SELECTOR_DEFAULTS, **backbone}, extractor_config={**EXTRACTOR_DEFAULTS, **backbone}
    )


def write_release_cards(directory: str | os.PathLike, repo_owner: str = "your-username") -> list[str]:
    """(Re)write `lookwhere-{dinov2,franca}-vitb14.md` in `directory` for the two official releases."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for variant, name in RELEASE_CARDS.items():
        card = render_model_card(release_config(variant), variant, repo_id=f"{repo_owner}/{name.removesuffix('.md')}")
        (directory / name).write_text(card, encoding="utf-8")
        written.append(str(directory / name))
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m lookwhere_hf.model_cards --output_dir model_cards`: regenerate the release cards."""
    parser = argparse.ArgumentParser(prog="python -m lookwhere_hf.model_cards", description=main.__doc__)
    parser.add_argument("--output_dir", default="model_cards", help="folder for the cards (default: ./model_cards)")
    parser.add_argument("--repo_owner", default="your-username", help="Hub user or organization in the usage snippets")
    args = parser.parse_args(argv)
    for path in write_release_cards(args.output_dir, args.repo_owner):
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
