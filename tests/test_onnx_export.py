"""`gres model export --format onnx`: the graphs reproduce torch, the folder is the contract of
`gres_cli.model.onnx_spec`, and every refusal is one line with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_grser, gres
from PIL import Image

from gres_cli.model import onnx_spec as spec
from gres_cli.model.encoders import TextFeatures
from gres_cli.model.grser import GRSer, expert_slots, presence
from gres_cli.model.onnx_sessions import weights_file
from gres_cli.model.preprocess import preprocess

ort = pytest.importorskip("onnxruntime")  # the dev extra installs it; CI always runs these
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo-model"
SYNTH = ROOT / "examples" / "synth-demo"


class OnnxModel:
    """The three graphs run the way a torch-free runtime runs them: ids from tokenizer.json
    through `tokenizers` alone, text.onnx, encode.onnx, then query.onnx."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.config = json.loads((folder / "config.json").read_text())
        graphs = self.config[spec.CONFIG_KEY]["graphs"]
        self.sessions = {g: ort.InferenceSession(str(folder / f)) for g, f in graphs.items()}
        self.stages = len(self.config["swin_depths"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        t = self.config["max_tokens"]
        self.tokenizer.enable_truncation(max_length=t)
        self.tokenizer.enable_padding(length=t, pad_id=self.tokenizer.token_to_id("[PAD]"))

    def text(self, expression: str) -> dict[str, np.ndarray]:
        rows = self.tokenizer.encode_batch([expression, spec.ANTI_PREFIX + expression])
        ids = {
            "input_ids": np.array([r.ids for r in rows], np.int64),
            "attention_mask": np.array([r.attention_mask for r in rows], np.int64),
        }
        out = self.sessions[spec.TEXT].run(list(spec.TEXT_FEATURES), ids)
        return dict(zip(spec.TEXT_FEATURES, out, strict=True))

    def encode(self, pixels: np.ndarray, text: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(spec.encode_outputs(self.stages))
        return self.sessions[spec.ENCODE].run(names, {spec.PIXELS: pixels, **text})

    def query(self, maps, text, experts: np.ndarray) -> list[np.ndarray]:
        k = self.config["experts"]
        slots = np.zeros((k, experts.shape[1]), np.float32)
        slots[: len(experts)] = experts
        valid = (np.arange(k) < len(experts)).astype(np.float32)
        feeds = dict(zip(spec.map_names(self.stages), maps, strict=True))
        feeds.update(sentence=text["sentence"], anti=text["anti"], experts=slots)
        feeds[spec.EXPERT_VALID] = valid
        return self.sessions[spec.QUERY].run(list(spec.QUERY_OUTPUTS), feeds)


def test_export_folder_is_the_contract(demo_onnx: Path):
    files = sorted(p.name for p in demo_onnx.iterdir())
    graphs = spec.GRAPH_FILES.values()
    assert files == sorted(
        ["README.md", "config.json", "tokenizer.json", "tokenizer_config.json",
         *graphs, *(weights_file(g) for g in graphs)]
    )  # fmt: skip
    for graph in graphs:  # the weights live beside the graph (mapped, not parsed, at load)
        data, onnx = (demo_onnx / weights_file(graph)).stat(), (demo_onnx / graph).stat()
        assert data.st_size > onnx.st_size
        assert data.st_mode == onnx.st_mode  # readable by whoever may read the graph
    config = json.loads((demo_onnx / "config.json").read_text())
    source = GRSer.from_pretrained(DEMO).config.to_dict()  # the config the model runs with
    facts = config.pop(spec.CONFIG_KEY)
    assert config.pop("model_type") == spec.MODEL_TYPE
    source.pop("model_type")
    assert config == source
    assert facts["opset"] == spec.DEFAULT_OPSET
    assert facts["onnxruntime"] == ort.__version__
    assert facts["torch"] == torch.__version__
    assert facts["graphs"] == spec.GRAPH_FILES
    # measured on this CPU (onnxruntime 1.32.0, torch 2.14.1): text 9.5e-7, encode 2.0e-4 (the
    # fused maps, values up to 6.5), query 6.9e-5
    errors = facts["max_abs_error"]
    assert errors[spec.TEXT] < 1e-5 and errors[spec.ENCODE] < 1e-3 and errors[spec.QUERY] < 2e-4
    card = (demo_onnx / "README.md").read_text()
    assert f"An ONNX export of the GRSer model `{DEMO}`" in card


def test_model_info_reads_an_export_without_loading_it(demo_onnx: Path):
    proc = gres("model", "info", str(demo_onnx), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["config"]["model_type"] == spec.MODEL_TYPE
    assert report["config"][spec.CONFIG_KEY]["graphs"] == spec.GRAPH_FILES
    proc = gres("model", "info", str(demo_onnx))
    assert proc.returncode == 0 and "GRSer ONNX export" in proc.stderr
    assert "self-check: query" in proc.stderr


@torch.no_grad()
def test_onnx_round_trip_on_synth_demo_matches_torch(demo_onnx: Path):
    """Each graph on real images: B = 8 (one group) and B = 1, K' = 1..K experts; probabilities
    within 1e-4 of torch, the same present/absent decisions."""
    net = GRSer.from_pretrained(DEMO)
    onnx = OnnxModel(demo_onnx)
    group = json.loads((SYNTH / "grd.json").read_text())["groups"][0]
    images = [Image.open(SYNTH / im["file"]) for im in group["images"]]
    pixels = preprocess(images, net.config.image_size)
    decisions = 0
    for expression in [e["text"] for e in group["expressions"]][:2]:
        text = net.encode_text([expression])
        ort_text = onnx.text(expression)
        for name, want in zip(spec.TEXT_FEATURES, text._tensors(), strict=True):
            np.testing.assert_allclose(ort_text[name], want.numpy(), atol=1e-5)
        enc = net.encode(pixels, text)
        scores = net.expert_scores(pixels, text, enc)
        ort_enc = onnx.encode(pixels.numpy(), ort_text)
        assert ort_enc[0].shape[0] == len(images)
        np.testing.assert_allclose(ort_enc[-2], scores.s_pos.numpy(), atol=1e-5)
        np.testing.assert_allclose(ort_enc[-1], scores.s_neg.numpy(), atol=1e-5)
        proto_index = onnx.stages + 1  # encode.onnx's outputs: maps, M_l, p, s_pos, s_neg
        protos = ort_enc[proto_index]
        np.testing.assert_allclose(protos, scores.prototypes.numpy(), atol=1e-5)
        for kept in range(1, net.config.experts + 1):
            chosen = net.select_experts(scores, kept)
            experts = scores.prototypes[chosen]
            out = net.query(None, text, experts, enc)
            for batch in (slice(0, len(images)), slice(2, 3)):
                logits, d_pos, d_neg = onnx.query(
                    [m[batch] for m in ort_enc[: onnx.stages]], ort_text,
                    protos[chosen.numpy()],
                )  # fmt: skip
                want = out.mask_logits[0][batch]
                assert logits.shape == tuple(want.shape)
                probability = torch.sigmoid(torch.from_numpy(logits))
                np.testing.assert_allclose(probability, torch.sigmoid(want), atol=1e-4)
                np.testing.assert_allclose(d_pos, out.d_pos[0][batch], atol=1e-4)
                np.testing.assert_allclose(d_neg, out.d_neg[0][batch], atol=1e-4)
                margin = net.config.margin
                same = presence(torch.from_numpy(d_pos), torch.from_numpy(d_neg), margin)
                assert (
                    same.tolist()
                    == presence(out.d_pos[0][batch], out.d_neg[0][batch], margin).tolist()
                )
                decisions += int(same.sum())
    assert decisions > 0  # some images called present: the masks were compared where they count


@torch.no_grad()
def test_tiny_model_export_round_trip(tmp_path: Path):
    """A grser-tiny without FiLM (the demo model has it), through the Python API."""
    from gres_cli.model.export import export_onnx

    model = build_tiny_grser(tmp_path / "tiny", seed=3)
    facts = export_onnx(str(model), tmp_path / "tiny-onnx")
    assert max(facts["max_abs_error"].values()) < 1e-3
    net = GRSer.from_pretrained(model)
    onnx = OnnxModel(tmp_path / "tiny-onnx")
    pixels = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    text = TextFeatures(*(torch.from_numpy(t) for t in onnx.text("a blue square").values()))
    enc = net.encode(pixels, text)
    maps = onnx.encode(pixels[:2].numpy(), onnx.text("a blue square"))[: onnx.stages]
    for kept in (1, 4):
        experts = enc.prototypes[:kept]
        out = net.query(None, text, experts, enc)
        logits, d_pos, _ = onnx.query(maps, onnx.text("a blue square"), experts.numpy())
        np.testing.assert_allclose(logits, out.mask_logits[0][:2], atol=1e-4)
        np.testing.assert_allclose(d_pos, out.d_pos[0][:2], atol=1e-5)


def test_failed_self_check_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from gres_cli.errors import GresError
    from gres_cli.model import export

    model = build_tiny_grser(tmp_path / "tiny")
    monkeypatch.setattr(export, "CHECK_TOLERANCE", 0.0)  # no float32 graph is exact
    with pytest.raises(GresError, match=r"self-check failed: onnxruntime's .* differs from torch"):
        export.export_onnx(str(model), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no OUT, no temporary


def test_refusals_are_one_line_and_write_nothing(tmp_path: Path):
    dino = tmp_path / "dino"  # refused on its config alone: nothing is loaded
    dino.mkdir()
    (dino / "config.json").write_text('{"model_type": "grounding-dino"}')
    proc = gres("model", "export", str(dino), str(tmp_path / "a"), "--format", "onnx")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "a grounding-dino model; ONNX export supports GRSer, CLIPSeg and SAM 3" in proc.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    proc = gres("model", "export", str(DEMO), str(taken))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "already exists" in proc.stderr
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    proc = gres("model", "export", str(DEMO), str(tmp_path / "b"), "--format", "tflite")
    assert proc.returncode == 2 and "the only export format is onnx" in proc.stderr
    proc = gres("model", "export", str(DEMO), str(tmp_path / "c"), "--opset", "99")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "--opset 99: the export supports opsets 14 to" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dino", "taken"]


def test_missing_onnxruntime_is_one_line(tmp_path: Path):
    """onnxruntime made unimportable in the child (a None entry in sys.modules is how Python
    marks a module that must not import): the export names the extra to install."""
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from gres_cli.cli import main\n"
        f"sys.argv = ['gres', 'model', 'export', {str(DEMO)!r}, {str(tmp_path / 'o')!r}]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert 'onnxruntime is missing): pip install "gres[onnx]"' in proc.stderr
    assert not (tmp_path / "o").exists()


def test_expert_slots_reject_more_experts_than_slots():
    with pytest.raises(ValueError, match="5 experts for 4 slots"):
        expert_slots(torch.zeros(5, 8), 4)
