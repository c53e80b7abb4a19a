"""A model's facts (registry.ModelFacts: K, the most K it takes, m, gamma, the group step) as a
Ray driver reads them to claim OUT without loading the model: equal to the loaded model's for
every kind and setting, and read without the weights where the kind says so."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_clipseg, build_tiny_grser
from test_backends_sam import build_tiny_grounding_dino, build_tiny_sam, build_tiny_sam3

from gres_cli.backends import ModelFacts, load_model, model_facts
from gres_cli.errors import GresError, ModelLoadError
from gres_cli.inference.engine import EngineOptions


def settings_folder(folder: Path, **settings: object) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gres-backend", **settings}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder of each kind gres loads, and settings folders over two of them."""
    root = tmp_path_factory.mktemp("kinds")
    clipseg = build_tiny_clipseg(root / "clipseg")
    detector = build_tiny_grounding_dino(root / "gdino")
    sam = build_tiny_sam(root / "sam")
    return {
        "grser": build_tiny_grser(root / "grser", margin=0.25, experts=3),
        "clipseg": clipseg,
        "sam3": build_tiny_sam3(root / "sam3"),
        "clipseg settings": settings_folder(
            root / "calibrated", backend=str(clipseg), margin=-0.125, experts=2, group_weight=0.5
        ),
        "clipseg settings, default margin": settings_folder(root / "plain", backend=str(clipseg)),
        "grounded-sam settings": settings_folder(
            root / "grounded", backend=str(detector), sam=str(sam), experts=5
        ),
    }


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize(
    "kind",
    [
        "grser",
        "clipseg",
        "sam3",
        "clipseg settings",
        "clipseg settings, default margin",
        "grounded-sam settings",
    ],
)
def test_the_facts_equal_the_loaded_models(models: dict[str, Path], kind: str, group: bool):
    facts = model_facts(models[kind], group=group)
    assert facts == ModelFacts.of(load_model(models[kind], group=group))
    assert facts.group is group


def test_the_facts_read_the_settings_and_the_config(models: dict[str, Path]):
    assert model_facts(models["grser"]) == ModelFacts(3, 3, 0.25, None, True)
    assert model_facts(models["clipseg settings"]) == ModelFacts(2, None, -0.125, 0.5, True)
    grounded = model_facts(models["grounded-sam settings"])
    assert grounded == ModelFacts(5, None, 2 * 0.35 - 1, 1.0, True)  # t: the box threshold


def test_a_settings_folder_with_a_setting_its_backend_lacks_is_refused_without_loading(
    models: dict[str, Path], tmp_path: Path
):
    odd = settings_folder(tmp_path / "odd", backend=str(models["clipseg"]), sam="x")
    with pytest.raises(ModelLoadError, match="a sam setting pairs with grounding-dino only"):
        model_facts(odd)


def test_a_grser_config_the_loader_refuses_is_refused_by_its_facts(
    models: dict[str, Path], tmp_path: Path
):
    broken = tmp_path / "no-text"
    shutil.copytree(models["grser"], broken)
    config = json.loads((broken / "config.json").read_text())
    del config["text_config"]
    (broken / "config.json").write_text(json.dumps(config))
    for read in (load_model, model_facts):
        with pytest.raises(ModelLoadError, match=r"config\.json lacks text_config"):
            read(broken)


def test_engine_options_are_checked_against_the_facts_as_a_segmenter_checks_them(
    models: dict[str, Path],
):
    facts = model_facts(models["grser"])
    assert EngineOptions().resolved(facts) == EngineOptions(experts=3, margin=0.25)
    assert EngineOptions(experts=2, margin=1.0).resolved(facts).margin == 1.0
    with pytest.raises(GresError, match=r"--experts 4: this model takes 1 to 3"):
        EngineOptions(experts=4).resolved(facts)
    with pytest.raises(GresError, match="--batch-size must be >= 1"):
        EngineOptions(batch_size=0).resolved(facts)


@pytest.mark.parametrize(("kind", "unread"), [("grser", "torch"), ("clipseg", "transformers")])
def test_the_facts_leave_the_weights_unread(models: dict[str, Path], kind: str, unread: str):
    """A GRSer's facts come off its config.json (no torch); a CLIPSeg's off its class (torch,
    for the module, but neither transformers nor the weights)."""
    script = (
        "import sys\n"
        "from gres_cli.backends import model_facts\n"
        f"print(model_facts({str(models[kind])!r}))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    facts, imported = proc.stdout.splitlines()
    assert facts.startswith("ModelFacts(")
    assert unread not in imported
