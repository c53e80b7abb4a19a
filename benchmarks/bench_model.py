"""GRSer speed on this machine: a grser-tiny forward on a group of 8 images at 96 px, and the
batched TQM (one einsum over the group) against a naive Python loop over image pairs.

    python benchmarks/bench_model.py
"""

from __future__ import annotations

import time

import torch

from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer
from gres_cli.model.tqm import TriphasicQueryModule


def best_of(fn, repeat: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    model = GRSer(GRSerConfig.preset("grser-tiny")).eval()
    x = torch.randn(1, 8, 3, 96, 96)
    text = model.encode_text(["the small red circle"])
    with torch.inference_mode():
        forward = best_of(lambda: model(x, text))
    print(
        f"grser-tiny forward, group of 8 at 96 px: {forward * 1000:.1f} ms "
        f"({8 / forward:.1f} images/s, {torch.get_num_threads()} threads)"
    )

    n, c, h, w = 64, 64, 12, 12
    v = torch.randn(1, n, c, h, w)
    p = torch.randn(1, n, c)

    def naive() -> torch.Tensor:
        out = torch.empty(n, n, h, w)
        for i in range(n):
            for j in range(n):
                out[i, j] = torch.nn.functional.cosine_similarity(
                    v[0, i], p[0, j][:, None, None], dim=0
                )
        return out

    with torch.inference_mode():
        batched = best_of(lambda: TriphasicQueryModule.visual_heatmaps(v, p))
        loop = best_of(naive, repeat=2)
        ref = naive()
        got = TriphasicQueryModule.visual_heatmaps(v, p)[0]
    assert torch.allclose(ref, got, atol=1e-4)
    print(
        f"TQM visual heatmaps, N={n}: batched {batched * 1000:.2f} ms, naive pair loop "
        f"{loop * 1000:.1f} ms, ratio {loop / batched:.0f}x"
    )


if __name__ == "__main__":
    main()
