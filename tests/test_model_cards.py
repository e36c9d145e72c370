"""Hub model cards: every card in model_cards/ parses with huggingface_hub's model-card tooling, carries the metadata
the Hub needs, states FLOPs that follow from the architecture, and the card the converter writes parses and its
usage code runs against a converted folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData

from lookwhere_hf.flops import flops_comparison
from lookwhere_hf.model_cards import RELEASE_CARDS, release_config, render_model_card, write_release_cards
from lookwhere_hf.models.lookwhere.convert_lookwhere_original_to_hf import convert_checkpoint

CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
SECTIONS = (
    "## Model details",
    "## How to use",
    "## Compute: the k_ratio / resolution trade-off",
    "## Conversion provenance",
    "## Limitations",
    "## Citation",
)


def _check_metadata(data: ModelCardData, variant: str) -> None:
    assert isinstance(data, ModelCardData)
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.license == "other" and data.license_name and data.license_link.startswith("https://")
    assert data.base_model == "antofuller/lookwhere"
    assert isinstance(data.datasets, list) and data.datasets
    assert {"lookwhere", "vision", "image-feature-extraction"} <= set(data.tags)
    if variant in ("dinov2", "franca"):
        assert variant in data.tags


def _flops_rows(text: str) -> list[tuple[int, float, int, float, float]]:
    """(resolution, k_ratio, k, LookWhere GFLOPs, full GFLOPs) from the card's FLOPs table."""
    rows = []
    for match in re.finditer(
        r"^\| (\d+)x\d+ \| ([\d.]+) \| (\d+) / \d+ \| [\d.]+ \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|",
        text,
        flags=re.MULTILINE,
    ):
        rows.append((int(match[1]), float(match[2]), int(match[3]), float(match[4]), float(match[5])))
    return rows


def test_every_card_in_the_folder_parses():
    cards = sorted(CARDS_DIR.glob("*.md"))
    assert {p.name for p in cards} >= set(RELEASE_CARDS.values())
    for path in cards:
        card = ModelCard.load(path, ignore_metadata_errors=False)
        assert card.data.library_name == "transformers", path.name


@pytest.mark.parametrize("variant", sorted(RELEASE_CARDS))
def test_release_card(variant):
    path = CARDS_DIR / RELEASE_CARDS[variant]
    card = ModelCard.load(path, ignore_metadata_errors=False)
    _check_metadata(card.data, variant)
    text = card.text
    for section in SECTIONS:
        assert section in text, section
    assert "arXiv:2505.18051" in text and "eprint        = {2505.18051}" in text
    assert f"lookwhere_{variant}.pt" in text and "${" not in card.content
    assert 'pipeline("image-feature-extraction"' in text and "AutoModel.from_pretrained(" in text

    # The FLOPs table: 518 and 1036 x k_ratio 0.05 / 0.1 / 0.25, numbers as the analytic count gives them.
    config = release_config(variant)
    rows = _flops_rows(text)
    assert [(r[0], r[1]) for r in rows] == [(res, ratio) for res in (518, 1036) for ratio in (0.05, 0.1, 0.25)]
    for res, ratio, k, lookwhere, full in rows:
        flops = flops_comparison(config, res, ratio)
        assert k == flops["k"]
        assert lookwhere == pytest.approx(flops["lookwhere"] / 1e9, abs=0.051)
        assert full == pytest.approx(flops["full"] / 1e9, abs=0.051)
        assert full > lookwhere
    if variant == "dinov2":
        # ViT-B/14 at 518 px: ~152 GMACs = ~304 GFLOPs; LookWhere at k = 10% is ~10x fewer.
        assert rows[1][4] == pytest.approx(304.2, abs=0.1) and rows[1][4] / rows[1][3] == pytest.approx(9.8, abs=0.1)
    assert "one multiply-add = 2 FLOPs" in text

    # The committed card is exactly what the shipped template renders for the release architecture (nothing stale).
    expected = render_model_card(config, variant, repo_id=f"your-username/{RELEASE_CARDS[variant][:-3]}")
    assert path.read_text(encoding="utf-8") == expected, (
        "model_cards/ is out of date with lookwhere_hf/templates/model_card.md: run "
        "python -m lookwhere_hf.model_cards --output_dir model_cards"
    )


def test_regenerating_the_release_cards(tmp_path, capsys):
    from lookwhere_hf.model_cards import main

    assert main(["--output_dir", str(tmp_path), "--repo_owner", "someone"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(RELEASE_CARDS.values())
    assert str(tmp_path / RELEASE_CARDS["dinov2"]) in capsys.readouterr().out
    text = (tmp_path / RELEASE_CARDS["franca"]).read_text(encoding="utf-8")
    assert text == render_model_card(release_config("franca"), "franca", repo_id="someone/lookwhere-franca-vitb14")
    assert write_release_cards(tmp_path) == [str(tmp_path / name) for name in RELEASE_CARDS.values()]


def test_custom_template_and_its_errors(tmp_path):
    config = release_config("dinov2")
    template = tmp_path / "card.md"
    template.write_text("---\nlibrary_name: transformers\n---\n# ${title}: k_ratio ${k_ratio}, ${repo_id}\n")
    text = render_model_card(config, "dinov2", repo_id="a/b", template_path=template)
    assert text.endswith("# LookWhere-DINOv2: k_ratio 0.1, a/b\n")
    template.write_text("${no_such_value}")
    with pytest.raises(ValueError, match="unknown or malformed placeholder.*known ones"):
        render_model_card(config, "dinov2", template_path=template)
    with pytest.raises(ValueError, match="does not exist"):
        render_model_card(config, "dinov2", template_path=tmp_path / "missing.md")
    with pytest.raises(ValueError, match="`variant` must be one of"):
        render_model_card(config, "dinov3")


def test_release_configs_match_the_official_architecture():
    dinov2, franca = release_config("dinov2"), release_config("franca")
    for config in (dinov2, franca):
        assert config.hidden_size == 768 and config.patch_size == 14
        assert config.low_res_size == 154 and config.high_res_size == 518
        assert config.selector_config.num_hidden_layers == 3 and config.extractor_config.num_hidden_layers == 12
        assert config.selector_upsample_factor == 4
    assert dinov2.num_prefix_tokens == 5 and not dinov2.extractor_config.use_swiglu_ffn
    assert franca.num_prefix_tokens == 1 and franca.extractor_config.use_swiglu_ffn


def test_converter_card_parses_and_its_usage_code_runs(tmp_path, monkeypatch, photos):
    """Convert a tiny official-format checkpoint, parse the README.md it writes, and run the card's Python snippets
    against the converted folder (the Hub repo id replaced by the folder path)."""
    from PIL import Image
    from test_conversion import build_official, official_checkpoint

    ckpt = tmp_path / "lookwhere_franca.pt"
    torch.save(official_checkpoint(*build_official("franca", seed=4)), ckpt)
    out = tmp_path / "lookwhere-franca-tiny"
    convert_checkpoint(ckpt, out, push_to_hub=None, run_self_check=False, log=lambda m: None)

    card = ModelCard.load(out / "README.md", ignore_metadata_errors=False)
    _check_metadata(card.data, "franca")
    for section in SECTIONS:
        assert section in card.text
    assert "sha256 `" in card.text and "lookwhere_franca.pt" in card.text and "${" not in card.content

    snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
    assert len(snippets) == 2
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photos["coffee"]).save(tmp_path / "photo.jpg")
    repo_id = "USER/lookwhere-franca-tiny"
    for code in snippets:
        assert repo_id in code
        namespace: dict = {}
        exec(compile(code.replace(repo_id, str(out)), "<model card>", "exec"), namespace)
    # The AutoModel snippet ended with a 1036 px input at k=300 on the tiny (hidden 128) model.
    outputs = namespace["outputs"]
    assert outputs.selected_indices.shape == (1, 300) and outputs.pooler_output.shape == (1, 128)
    assert outputs.selector_map.shape == (1, (1036 // 14) ** 2)
    # ... and it ran the converted weights: the same call made here gives the same numbers (same kernels: exact)
    from lookwhere_hf import LookWhereImageProcessor, LookWhereModel

    reference = LookWhereModel.from_pretrained(out).eval()
    inputs = LookWhereImageProcessor.from_pretrained(out)(
        images=namespace["image"], size={"height": 1036, "width": 1036}, return_tensors="pt"
    )
    with torch.no_grad():
        expected = reference(**inputs, k=300)
    assert torch.equal(outputs.selected_indices, expected.selected_indices)
    torch.testing.assert_close(outputs.pooler_output, expected.pooler_output, rtol=0, atol=0)


def test_card_for_a_non_release_checkpoint():
    """A checkpoint in the official layout that is neither release gets a card without release-specific metadata."""
    from conftest import make_tiny_config

    text = render_model_card(make_tiny_config(), "custom", repo_id="someone/my-lookwhere")
    card = ModelCard(text)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.base_model is None and card.data.datasets is None
    assert "(ViT, hidden 32, depth 2, patch 14)" in text and "someone/my-lookwhere" in text and "${" not in text
