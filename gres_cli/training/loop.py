"""The training loop: AdamW, warm-up + cosine/poly decay, clipping, accumulation, autocast,
atomic checkpoints, bit-for-bit resume, JSONL log, periodic validation, best-model export.

Layout of OUT:
    OUT/train_config.json     the resolved TrainConfig
    OUT/log.jsonl             one record per logged step and per validation
    OUT/tensorboard/          the same scalars as TensorBoard events (when it is installed)
    OUT/checkpoint/           last checkpoint: a model folder + trainer_state.pt (atomic)
    OUT/best/                 the best model by validation (Hub-ready: config, weights, card)
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grd_tools.fsutil import atomic_output_dir, atomic_write_text, recover_output_dir
from gres_cli.errors import GresError
from gres_cli.metrics.masks import GRESMeter, pair_iou
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer
from gres_cli.model.preprocess import normalize
from gres_cli.training.config import TrainConfig
from gres_cli.training.data import (
    GroupReader,
    GroupSamples,
    SplitIndex,
    train_loader,
)
from gres_cli.training.losses import LossWeights, grser_losses

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "train_config.json"
#: keys that change how fast a run goes, not what it computes: --resume may change them
RUNTIME_KEYS = {"threads", "tensorboard"}


@dataclass
class TrainResult:
    steps: int
    last_loss: float
    best: dict[str, float] | None
    out: Path


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        t = min(max(t, 0.0), 1.0)
        if cfg.schedule == "poly":
            return (1 - t) ** 0.9
        return 0.5 * (1 + math.cos(math.pi * t))

    return factor


def build_model(cfg: TrainConfig) -> GRSer:
    if cfg.init_from:
        return GRSer.from_pretrained(cfg.init_from)
    spec = dict(cfg.model)
    name = spec.pop("preset", None)
    config = GRSerConfig.preset(name, **spec) if name else GRSerConfig.from_dict(spec)
    return GRSer(config)


def _optimizer(model: GRSer, cfg: TrainConfig) -> torch.optim.Optimizer:
    text = [p for n, p in model.named_parameters() if n.startswith("text_encoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.")]
    return torch.optim.AdamW(
        [{"params": rest}, {"params": text, "lr": cfg.text_lr or cfg.lr}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )


def margin_candidates(scores: np.ndarray, count: int = 41) -> list[float]:
    """Margins m spanning the scores d_neg - d_pos actually take: midpoints between
    consecutive quantiles (0, 1/(count-1), ..., 1) of the scores, plus one below the smallest
    (every pair present) and the largest (every pair absent), plus 0."""
    if scores.size == 0:
        return [0.0]
    q = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, count)))
    mids = [round(float(m), 4) for m in (q[1:] + q[:-1]) / 2]
    # edges rounded outwards, so they still call every pair present / absent
    edges = [math.floor(q[0] * 1e4 - 1) / 1e4, math.ceil(q[-1] * 1e4) / 1e4]
    return sorted({m + 0.0 for m in [*mids, *edges, 0.0]})


@torch.no_grad()
def evaluate_groups(model: GRSer, data: GroupReader) -> dict[str, Any]:
    """`gres eval`'s metrics (GRESMeter, protocol gres, at input resolution) at the margin m
    that maximises present/absent accuracy, plus `mIoU_pos` (mean IoU over positives, a
    positive called absent scoring 0), the chosen `margin` and the accuracy curve over the
    candidates (`margin_curve`: margin_candidates of the scores, so m is searched over the
    range d_neg - d_pos takes, not a fixed grid).

    Every expression is run on its whole group (the paper's all-pairs computation). Each pair
    is measured once both ways (mask kept / called absent) and replayed at the chosen m, so
    memory holds a few numbers per pair, never masks.
    """
    was = model.training
    model.eval()
    empty_iou = GRESMeter().protocol.empty_iou
    scores, kept, dropped, gt_present = [], [], [], []
    for pixels, text, masks in data:
        out = model(normalize(pixels.to(model.device)), [text])
        pred = (torch.sigmoid(out.mask_logits[0]) > 0.5).cpu().numpy()
        for k, m in enumerate(masks):
            gt = None if m is None else m.numpy()
            scores.append(float(out.d_neg[0, k] - out.d_pos[0, k]))
            kept.append((*pair_iou(pred[k], gt, empty_iou), bool(pred[k].any())))
            dropped.append((*pair_iou(np.zeros_like(pred[k]), gt, empty_iou), False))
            gt_present.append(gt is not None and bool(gt.any()))
    model.train(was)
    score, truth = np.asarray(scores), np.asarray(gt_present, dtype=bool)
    margins = margin_candidates(score)
    # the presence rule d_pos + m < d_neg is score > m
    accuracy = [float(np.mean((score > m) == truth)) if score.size else 0.0 for m in margins]
    best = max(range(len(margins)), key=lambda i: (accuracy[i], -abs(margins[i])))
    best_m = margins[best]
    meter, positive_ious = GRESMeter(), []
    for s, present, on, off in zip(score, truth, kept, dropped, strict=True):
        decided = bool(s > best_m)
        iou, inter, union, nonempty = on if decided else off
        meter.add_measured(iou, inter, union, bool(present), decided, nonempty)
        if present:
            positive_ious.append(iou)
    return {
        **meter.compute(),
        "margin": best_m,
        "mIoU_pos": float(np.mean(positive_ious)) if positive_ious else 0.0,
        "pairs": meter.pairs,
        "margin_curve": {"margin": margins, "acc": accuracy},
    }


def trainer_state(opt, sched, scaler, step: int) -> dict[str, Any]:
    """What a checkpoint holds besides the weights: optimizer, scheduler, fp16 loss scale."""
    return {
        "step": step,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
    }


def restore_trainer_state(state: dict[str, Any], opt, sched, scaler) -> int:
    """Load `trainer_state` back; returns the step to continue from."""
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):  # empty when the run had no fp16 scaling
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])


def saved_config(out: Path) -> TrainConfig | None:
    """The config a run in OUT was started with (None when OUT has none)."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return TrainConfig.from_dict(json.loads(path.read_text("utf-8")))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise GresError(f"{path}: cannot read the run's config ({e})") from None


def check_resume_config(out: Path, cfg: TrainConfig) -> None:
    """--resume continues the run's own recipe: a different one is refused, naming the key."""
    saved = saved_config(out)
    if saved is None:
        return
    old, new = saved.to_dict(), cfg.to_dict()
    for key in old:
        if key not in RUNTIME_KEYS and old[key] != new.get(key):
            raise GresError(
                f"--resume: {out} was trained with {key}={old[key]!r}, not {new.get(key)!r}; "
                "resume without --config/--preset/--steps, or start a new --out"
            )


def _save_checkpoint(out: Path, model: GRSer, opt, sched, scaler, step: int) -> None:
    with atomic_output_dir(out / "checkpoint", overwrite=True) as tmp:
        model.save_pretrained(tmp)
        torch.save(trainer_state(opt, sched, scaler, step), tmp / STATE_FILE)


class RunLog:
    """OUT/log.jsonl (one JSON record per line) and, when the `tensorboard` package is
    installed (or `tensorboard: true` asks for it), the same scalars as TensorBoard events in
    OUT/tensorboard/: `train/<term>` per logged step, `val/<metric>` per validation."""

    def __init__(self, out: Path, tensorboard: bool | None = None) -> None:
        self.jsonl = (out / "log.jsonl").open("a", encoding="utf-8")
        self.board = None
        if tensorboard is False:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if tensorboard:
                self.jsonl.close()
                raise GresError(
                    "tensorboard: true needs the tensorboard package: "
                    "pip install 'gres[tensorboard]'"
                ) from None
            return
        self.board = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.board is None:
            return
        step = int(record["step"])
        values = record.get("val", record)
        prefix = "val" if "val" in record else "train"
        for key, value in values.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.board.add_scalar(f"{prefix}/{key}", value, step)
        self.board.flush()

    def close(self) -> None:
        self.jsonl.close()
        if self.board is not None:
            self.board.close()


def train(
    dataset: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    resume: bool = False,
    max_steps: int | None = None,
    device: str = "cpu",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train GRSer on a GRD dataset folder; see the module docstring for what lands in OUT.

    Under `torchrun` (WORLD_SIZE > 1) the same call trains with DistributedDataParallel: each
    rank draws its own groups (its rank joins the step's seed), gradients are averaged, and only
    rank 0 writes (log, checkpoints, best model, validation).
    """
    world, rank, device = distributed_setup(device)
    main = rank == 0
    out = Path(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = out / "checkpoint"
    if main:
        recover_output_dir(ckpt)  # a checkpoint a crash left moved aside
    if resume and not (ckpt / STATE_FILE).is_file():
        raise GresError(f"{out}: no checkpoint to resume from")
    if not resume and ckpt.exists():
        raise GresError(f"{out}: holds a checkpoint; pass --resume to continue or pick a new --out")
    if resume:
        check_resume_config(out, cfg)
    if main and not (resume and (out / CONFIG_FILE).is_file()):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")

    # the data first: a dataset without the split fails in seconds, not after building the model
    train_index, val_index = _split_indexes(dataset, cfg)
    torch.manual_seed(cfg.seed)
    model = GRSer.from_pretrained(ckpt) if resume else build_model(cfg)
    model.to(device).train()
    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # the BERT pooler is never used: DDP must not wait for its gradients
        net = DistributedDataParallel(model, find_unused_parameters=True)
    size = model.config.image_size
    samples = GroupSamples(train_index, size, cfg.sampling(), cfg.seed, cfg.preload)
    val_data = None if val_index is None else GroupReader(val_index, size)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    use_amp = device.startswith("cuda") and cfg.precision in ("bf16", "fp16")
    amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.precision == "fp16")
    start = 0
    if resume:
        state = torch.load(ckpt / STATE_FILE, weights_only=True)
        start = restore_trainer_state(state, opt, sched, scaler)
    weights = LossWeights(
        cfg.mask_weight,
        cfg.dice_weight,
        cfg.triplet_weight,
        cfg.prototype_weight,
        cfg.mirror_weight,
        cfg.triplet_margin,
        cfg.positive_class_weight,
        cfg.negative_class_weight,
        cfg.dice_negatives,
    )
    end = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)
    best = None
    best_path = out / "best" / "metrics.json"
    if best_path.is_file():
        best = json.loads(best_path.read_text())
    # each micro-batch is the next groups_per_step draws of this rank's stream: resume skips
    # the draws already consumed
    loader = train_loader(
        samples, cfg.groups_per_step, cfg.workers, world, rank,
        start * cfg.accumulate * cfg.groups_per_step,
    )  # fmt: skip
    # the workers are forked when the loader starts: frozen, the parent's objects are left
    # alone by the workers' garbage collector, so their pages stay shared, not copied
    gc.collect()
    gc.freeze()
    try:
        batches = iter(loader)
    finally:
        gc.unfreeze()  # the workers keep theirs frozen
    last = float("nan")
    log = RunLog(out, cfg.tensorboard) if main else None
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            # each step's randomness is a pure function of (seed, step): resume is exact
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            terms_sum: dict[str, float] = {}
            for _ in range(cfg.accumulate):
                batch = next(batches)
                with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):
                    result = net(
                        batch.pixel_values.to(device), batch.texts, batch.image_mask.to(device)
                    )
                    terms = grser_losses(
                        result,
                        batch.masks.to(device),
                        batch.present.to(device),
                        batch.image_mask.to(device),
                        weights,
                        model.config.normalize_embeddings,
                    )
                scaler.scale(terms["total"] / cfg.accumulate).backward()
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / cfg.accumulate
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            last = terms_sum["total"]
            done = step + 1
            if not math.isfinite(last):
                raise GresError(f"step {done}: loss is {last}; lower --lr or check the data")
            if on_step is not None and main:
                on_step(done, terms_sum)
            if not main:
                continue
            if done % cfg.log_every == 0 or done == end:
                rec = {"step": done, "lr": sched.get_last_lr()[0], "sec": time.perf_counter() - t0}
                log.write({**rec, **terms_sum})
            if val_data is not None and (done % cfg.val_every == 0 or done == end):
                metrics = evaluate_groups(model, val_data)
                curve = metrics.pop("margin_curve")
                log.write({"step": done, "val": metrics})
                score = metrics["acc"] + metrics["mIoU_pos"]
                if best is None or score > best["acc"] + best["mIoU_pos"]:
                    best = {**metrics, "step": done}
                    model.config.margin = metrics["margin"]
                    model.config.extra["metrics"] = {
                        "val accuracy": metrics["acc"],
                        "val mIoU (positives)": metrics["mIoU_pos"],
                        "margin m": metrics["margin"],
                        "step": done,
                    }
                    model.config.extra["margin_curve"] = curve  # val accuracy per margin m
                    with atomic_output_dir(out / "best", overwrite=True) as tmp:
                        model.save_pretrained(tmp)
                        atomic_write_text(tmp / "metrics.json", json.dumps(best, indent=2))
            if done % cfg.checkpoint_every == 0 or done == end:
                _save_checkpoint(out, model, opt, sched, scaler, done)
    finally:
        if log is not None:
            log.close()
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
    return TrainResult(end, last, best, out)


def _split_indexes(dataset: str | Path, cfg: TrainConfig) -> tuple[SplitIndex, SplitIndex | None]:
    """The train split's index and the validation split's (None when it has no groups).
    The parsed dataset is dropped on return: only the compact indexes outlive it."""
    from grd_tools.format import load

    ds = load(dataset)
    train_index = SplitIndex(ds, cfg.train_split)
    if cfg.val_split and any(g.split == cfg.val_split for g in ds.groups):
        return train_index, SplitIndex(ds, cfg.val_split)
    return train_index, None


def distributed_setup(device: str) -> tuple[int, int, str]:
    """(world size, rank, device) from torchrun's environment; starts the process group."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        cuda = device.startswith("cuda")
        if cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
    return world, rank, device
