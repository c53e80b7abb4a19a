"""SAM 3 and Grounding DINO + SAM backends, as tiny random models built here, against the
library's own processors and post-processing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gres, populate_hub_cache, read_jsonl, tiny_clip_tokenizer
from PIL import Image

from gres_cli.backends import load_model
from gres_cli.errors import ModelLoadError
from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup

EXPRESSION = "the red umbrella"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five PNGs of different sizes and shapes (PNG: decoded exactly as a user's would be)."""
    folder = tmp_path_factory.mktemp("photos") / "day1"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i, (w, h) in enumerate([(70, 50), (64, 64), (90, 40), (33, 77), (100, 80)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{i:02d}.png"
        )
    return folder


def cli_masks(model: Path, photos: Path, out: Path, env: dict | None = None) -> list[dict]:
    """`gres segment` with every image called present (m = -5), masks read back as arrays."""
    proc = gres(
        "segment", str(photos), EXPRESSION, "--model", str(model), "--margin", "-5",
        "--out", str(out), "--jsonl", str(out / "r.jsonl"), env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recs = read_jsonl(out / "r.jsonl")
    assert all(r["present"] for r in recs)
    for r in recs:
        r["mask_array"] = None if r["mask"] is None else np.asarray(Image.open(r["mask"])) > 0
    return recs


def assert_backend_alone(model_dir: Path, photos: Path, threshold: float) -> None:
    """group=False (--no-group) is the backend alone: present iff b > (1 + m) / 2, at a m that
    splits the folder; the grouped run keeps the same backend score and call."""
    group = ImageGroup("day1", sorted(photos.glob("*.png")))
    grouped = Segmenter(load_model(model_dir), "cpu", batch_size=8).run_group(group, EXPRESSION)
    scores = sorted(r.backend_score for r in grouped)
    middle = (scores[1] + scores[2]) / 2
    solo_model = load_model(model_dir, group=False)
    assert solo_model.margin == pytest.approx(2 * threshold - 1)
    solo = Segmenter(solo_model, "cpu", batch_size=8, margin=2 * middle - 1).run_group(
        group, EXPRESSION
    )
    assert [r.present for r in solo] == [r.backend_score > middle for r in solo]
    assert sum(r.present for r in solo) == 3
    assert [r.present for r in solo] == [r.backend_present for r in solo]
    assert [r.backend_score for r in grouped] == pytest.approx([r.backend_score for r in solo])
    for r in solo:
        assert (r.d_pos, r.d_neg) == pytest.approx((1 - r.backend_score, r.backend_score))


def offline(cache: Path) -> dict:
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin"}


def assert_offline_hub_cache(
    model_dir: Path, repo: str, photo: Path, cache: Path, out: Path
) -> dict:
    """`--model REPO` with the model only in a local Hub cache and HF_HUB_OFFLINE=1."""
    populate_hub_cache(cache, repo, model_dir)
    proc = gres(
        "segment", str(photo), EXPRESSION, "--model", repo, "--format", "none",
        "--out", str(out), "--jsonl", "-", env=offline(cache),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (rec,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(rec) >= {"backend_score", "backend_present", "d_pos", "d_neg", "present"}
    assert isinstance(rec["backend_score"], float) and isinstance(rec["backend_present"], bool)
    return rec


def spread_weights(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Redraw the weight matrices wider: at the default initialisation (std 0.02) a tiny model
    scores every image alike and its mask logits are all near 0, so a mask comparison at 0.5
    would test float noise rather than our glue."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    return model


# ---- SAM 3 ------------------------------------------------------------------------------------


def build_tiny_sam3(folder: Path, seed: int = 0, size: int = 112) -> Path:
    """A random SAM 3 of about 0.3 M parameters (1-2 layers a part, 20 queries, 112 px) with
    its processor, saved as `save_pretrained` writes it."""
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    config = Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model", num_hidden_layers=2, global_attn_indexes=[1],
                image_size=size, patch_size=14, window_size=4, pretrain_image_size=56, **small,
            ),
            fpn_hidden_size=32,  # = the hidden size of the parts below
            backbone_feature_sizes=[[4 * size // 14] * 2, [2 * size // 14] * 2, [size // 14] * 2],
        ),
        text_config=dict(
            vocab_size=514, num_hidden_layers=2, projection_dim=32, max_position_embeddings=32,
            bos_token_id=512, eos_token_id=513, pad_token_id=513, **small,
        ),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=20, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = spread_weights(Sam3Model(config).eval())
    model.save_pretrained(folder)
    images = Sam3ImageProcessor(size={"height": size, "width": size})
    Sam3Processor(image_processor=images, tokenizer=tiny_clip_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3")


def test_sam3_masks_equal_the_library_processor_and_post_processing(
    sam3_dir: Path, photos: Path, tmp_path: Path
):
    from transformers import Sam3Model, Sam3Processor

    recs = cli_masks(sam3_dir, photos, tmp_path / "out")
    assert len(recs) == 5
    processor = Sam3Processor.from_pretrained(sam3_dir)
    model = Sam3Model.from_pretrained(sam3_dir).eval()
    compared = 0
    for rec in recs:
        image = Image.open(rec["image"]).convert("RGB")
        inputs = processor(images=image, text=EXPRESSION, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        (result,) = processor.post_process_instance_segmentation(
            outputs, threshold=-1.0, mask_threshold=0.5, target_sizes=[image.size[::-1]]
        )  # threshold -1: every query kept, in query order
        best = int(result["scores"].argmax())
        assert rec["backend_score"] == pytest.approx(float(result["scores"][best]), abs=1e-6)
        want = result["masks"][best].numpy().astype(bool)
        assert (rec["width"], rec["height"]) == image.size
        if rec["mask"] is None:
            assert not want.any()
            continue
        assert rec["mask_array"].shape == want.shape and np.array_equal(rec["mask_array"], want)
        compared += 1
    assert compared >= 3  # not a test of empty masks


def test_sam3_is_read_from_its_config_and_runs_alone_with_no_group(
    sam3_dir: Path, photos: Path, tmp_path: Path
):
    renamed = tmp_path / "clipseg-looking-name"
    renamed.symlink_to(sam3_dir, target_is_directory=True)
    model = load_model(renamed)
    assert model.kind == "sam3" and model.input_size == 112 and model.margin == 0.0
    # the text encoder has 32 positions: a longer expression is truncated, not an error
    long_text = model.encode_text("the umbrella that is red and held by the man " * 3)
    assert long_text.attention_mask.shape == (1, 32)
    pixels = torch.stack([model.preparer()(Image.open(p)) for p in sorted(photos.glob("*.png"))])
    with torch.no_grad():
        assert model.forward(pixels[:2], long_text).score.shape == (2,)
    assert_backend_alone(sam3_dir, photos, threshold=0.5)


def test_sam3_video_config_loads_its_image_detector(sam3_dir: Path, photos: Path, tmp_path: Path):
    """facebook/sam3's config is a `sam3_video` one holding the image detector's config."""
    from transformers import Sam3VideoConfig

    video = tmp_path / "sam3-video"
    shutil.copytree(sam3_dir, video)
    detector = json.loads((sam3_dir / "config.json").read_text())
    Sam3VideoConfig(detector_config=detector).save_pretrained(video)
    assert json.loads((video / "config.json").read_text())["model_type"] == "sam3_video"
    image, from_video = load_model(sam3_dir), load_model(video)
    assert from_video.kind == "sam3"
    pixels = torch.stack([image.preparer()(Image.open(p)) for p in sorted(photos.glob("*.png"))])
    with torch.no_grad():
        want = image.forward(pixels, image.encode_text(EXPRESSION))
        got = from_video.forward(pixels, from_video.encode_text(EXPRESSION))
    torch.testing.assert_close(got.score, want.score)
    torch.testing.assert_close(got.mask_logits, want.mask_logits)


def test_sam3_through_an_offline_hub_cache(sam3_dir: Path, photos: Path, tmp_path: Path):
    one = sorted(photos.glob("*.png"))[0]
    assert_offline_hub_cache(sam3_dir, "gres-test/tiny-sam3", one, tmp_path / "hub", tmp_path / "o")


# ---- Grounding DINO + SAM ---------------------------------------------------------------------


def tiny_bert_tokenizer():
    """A BERT word-piece tokenizer over the test's words, letters and specials (no download)."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *EXPRESSION.split()]
    vocab = {t: i for i, t in enumerate(words + [chr(c) for c in range(97, 123)])}
    return BertTokenizer(vocab=vocab)


def build_tiny_grounding_dino(folder: Path, seed: int = 0, side: int = 128) -> Path:
    """A random Grounding DINO of about 0.4 M parameters (Swin and BERT of 1 layer a stage,
    30 queries) with its processor."""
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tokenizer = tiny_bert_tokenizer()
    heads = dict(encoder_attention_heads=2, decoder_attention_heads=2)
    config = GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
            window_size=4, image_size=side, out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=dict(
            model_type="bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
        ),
        num_queries=30, encoder_layers=1, decoder_layers=2,  # 2: the box heads are tied
        encoder_ffn_dim=64, decoder_ffn_dim=64, d_model=32, max_text_len=32,
        encoder_n_points=2, decoder_n_points=2, **heads,
    )  # fmt: skip
    torch.manual_seed(seed)
    spread_weights(GroundingDinoForObjectDetection(config).eval()).save_pretrained(folder)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer
    ).save_pretrained(folder)
    return folder


def build_tiny_sam(folder: Path, seed: int = 0, side: int = 128) -> Path:
    """A random SAM of about 0.05 M parameters reading a `side` px canvas, with its processor."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
            output_channels=16, image_size=side, patch_size=16, window_size=4,
            global_attn_indexes=[1], num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=side, patch_size=16),
        mask_decoder_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32,
            iou_head_hidden_dim=16,
        ),
    )  # fmt: skip
    torch.manual_seed(seed)
    spread_weights(SamModel(config).eval()).save_pretrained(folder)
    images = SamImageProcessor(
        size={"longest_edge": side},
        pad_size={"height": side, "width": side},
        mask_size={"longest_edge": side // 4},
        mask_pad_size={"height": side // 4, "width": side // 4},
    )
    SamProcessor(image_processor=images).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def grounded_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(Grounding DINO folder, SAM folder, Hub cache holding that SAM as the default id)."""
    root = tmp_path_factory.mktemp("grounded")
    detector = build_tiny_grounding_dino(root / "tiny-gdino")
    sam = build_tiny_sam(root / "tiny-sam")
    populate_hub_cache(root / "hub", "facebook/sam-vit-base", sam)
    return detector, sam, root / "hub"


def test_grounded_sam_masks_equal_the_library_processors_and_post_processing(
    grounded_dirs: tuple[Path, Path, Path], photos: Path, tmp_path: Path
):
    """`--model GDINO_DIR` pairs with facebook/sam-vit-base from the (offline) Hub cache; every
    mask equals the Grounded-SAM recipe run with the library's functions on the same canvas."""
    from transformers import (
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SamModel,
        SamProcessor,
    )

    detector_dir, sam_dir, cache = grounded_dirs
    recs = cli_masks(detector_dir, photos, tmp_path / "out", env=offline(cache))
    assert len(recs) == 5
    processor = GroundingDinoProcessor.from_pretrained(detector_dir)
    detector = GroundingDinoForObjectDetection.from_pretrained(detector_dir).eval()
    sam_processor = SamProcessor.from_pretrained(sam_dir)
    sam = SamModel.from_pretrained(sam_dir).eval()
    canvas = {
        "size": {"shortest_edge": 128, "longest_edge": 128},
        "pad_size": {"height": 128, "width": 128},
    }
    compared = 0
    for rec in recs:
        image = Image.open(rec["image"]).convert("RGB")
        inputs = processor(images=image, text=[EXPRESSION], return_tensors="pt", **canvas)
        with torch.no_grad():
            outputs = detector(**inputs)
        (boxes,) = processor.post_process_grounded_object_detection(
            outputs, input_ids=inputs["input_ids"], threshold=-1.0, text_threshold=0.25,
            target_sizes=[image.size[::-1]],
        )  # fmt: skip
        best = int(boxes["scores"].argmax())
        assert rec["backend_score"] == pytest.approx(float(boxes["scores"][best]), abs=1e-6)
        sam_inputs = sam_processor(
            images=image, input_boxes=[[boxes["boxes"][best].tolist()]], return_tensors="pt"
        )
        with torch.no_grad():
            sam_out = sam(**sam_inputs, multimask_output=False)
        (want,) = sam_processor.post_process_masks(
            sam_out.pred_masks, sam_inputs["original_sizes"], sam_inputs["reshaped_input_sizes"]
        )
        want = want[0, 0].numpy()
        assert (rec["width"], rec["height"]) == image.size
        if rec["mask"] is None:
            assert not want.any()
            continue
        assert rec["mask_array"].shape == want.shape and np.array_equal(rec["mask_array"], want)
        compared += 1
    assert compared >= 3  # not a test of empty masks


def write_settings(folder: Path, **settings: object) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gres-backend", **settings}))
    return folder


def test_grounded_sam_settings_name_the_sam_and_no_group_is_the_detector_alone(
    grounded_dirs: tuple[Path, Path, Path], sam3_dir: Path, photos: Path, tmp_path: Path
):
    detector_dir, sam_dir, _ = grounded_dirs
    paired = write_settings(tmp_path / "paired", backend=str(detector_dir), sam=str(sam_dir))
    model = load_model(paired)
    assert model.kind == "grounding-dino" and model.config["sam"] == str(sam_dir)
    assert model.margin == pytest.approx(-0.3) and model.input_size == 128
    assert_backend_alone(paired, photos, threshold=0.35)
    not_sam = write_settings(tmp_path / "not-sam", backend=str(detector_dir), sam=str(sam3_dir))
    with pytest.raises(ModelLoadError, match="not a SAM checkpoint"):
        load_model(not_sam)
    stray = write_settings(tmp_path / "stray", backend=str(sam3_dir), sam=str(sam_dir))
    with pytest.raises(ModelLoadError, match="pairs with grounding-dino only"):
        load_model(stray)


def test_model_init_pairs_sam_only_with_a_backend_that_declares_it(
    grounded_dirs: tuple[Path, Path, Path], sam3_dir: Path, tmp_path: Path
):
    """`gres model init --backend B --sam S`: the kinds whose own settings name `sam` take it
    (Grounding DINO, written into the settings); any other is refused in one line, nothing
    written."""
    detector_dir, sam_dir, _ = grounded_dirs
    made = gres("model", "init", str(tmp_path / "paired"), "--backend", str(detector_dir),
                "--sam", str(sam_dir))  # fmt: skip
    assert made.returncode == 0, made.stderr
    config = json.loads((tmp_path / "paired" / "config.json").read_text())
    assert config["sam"] == str(sam_dir)
    refused = gres("model", "init", str(tmp_path / "stray"), "--backend", str(sam3_dir),
                   "--sam", str(sam_dir))  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "gres: error: --sam pairs with a grounding-dino --backend, not sam3"
    )
    assert not (tmp_path / "stray").exists()


def test_grounded_sam_truncates_an_expression_past_its_text_positions(
    grounded_dirs: tuple[Path, Path, Path], photos: Path, tmp_path: Path, capsys
):
    """Was: a RuntimeError (tensor sizes differ) past Grounding DINO's max_text_len. Cut at
    min(max_text_len, the text model's max_position_embeddings) = 32 here, said once."""
    detector_dir, sam_dir, _ = grounded_dirs
    model = load_model(write_settings(tmp_path / "s", backend=str(detector_dir), sam=str(sam_dir)))
    long = "the umbrella that is red and held by the man " * 5
    for _ in range(2):
        text = model.encode_text(long)
    assert text["input_ids"].shape == (1, 32)
    said = [line for line in capsys.readouterr().err.splitlines() if "truncated" in line]
    assert len(said) == 1 and "32" in said[0], said
    pixels = torch.stack([model.preparer()(Image.open(p)) for p in sorted(photos.glob("*.png"))])
    with torch.no_grad():
        assert model.forward(pixels[:2], text).score.shape == (2,)


def test_grounded_sam_through_an_offline_hub_cache(
    grounded_dirs: tuple[Path, Path, Path], photos: Path, tmp_path: Path
):
    detector_dir, _, cache = grounded_dirs
    one = sorted(photos.glob("*.png"))[1]
    rec = assert_offline_hub_cache(detector_dir, "gres-test/tiny-gdino", one, cache, tmp_path / "o")
    # the default margin m = 2 * 0.35 - 1: the backend alone calls present above 0.35
    assert rec["backend_present"] == (rec["backend_score"] > 0.35)
