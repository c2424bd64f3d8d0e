"""How strongly λ·L_div (Eq. 7, 14) pulls on the attention heads at initialisation, per map scaling.

For each preset and each way of scaling the maps before Eq. 7, prints the ratio

    ||∇_θ λ L_div|| / ||∇_θ L_AE||,   θ = the RMHHA parameters (every head's Q, K, V, CA, FC1, FC2),

of an untrained AttentionNet in training mode (BatchNorm on batch statistics, as in the first
step of stage 1), over several initialisation seeds and batches of drawn synthetic faces
(``adpf.data.synthetic``), λ = ``config.diversity_weight`` (0.01). Scalings:

``raw``         the hybrid maps as they are;
``normalized``  shifted to min 0, summing to one over space (``losses.normalize_maps``);
``mean_one``    shifted to min 0, mean one over space (sum h·w);
``unit``        shifted to min 0, unit L2 norm over space (``losses.unit_maps``).

Usage: python benchmarks/diversity_gradient.py [--seeds 3] [--batches 2] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from adpf.config import get_preset
from adpf.data.prepared import images_to_tensor
from adpf.data.synthetic import make_synthetic_faces
from adpf.evaluate import head_overlap
from adpf.losses import age_estimation_loss, diversity_loss, normalize_maps, unit_maps
from adpf.networks import AttentionNet


def mean_one(maps: torch.Tensor) -> torch.Tensor:
    """Shifted to min 0 and scaled to mean one over space ``(B, n, h, w)`` (a candidate, not adopted)."""
    return normalize_maps(maps) * (maps.shape[-2] * maps.shape[-1])


SCALINGS = {"raw": lambda m: m, "normalized": normalize_maps, "mean_one": mean_one, "unit": unit_maps}


def gradient_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum(g.double().square().sum() for g in grads if g is not None)))


def measure(preset: str, seeds: int, batches: int, batch_size: int) -> dict[str, list[float]]:
    config = get_preset(preset, variant="attention_only")
    out = {name: [] for name in SCALINGS} | {f"L_div {name}": [] for name in SCALINGS} | {"L_AE": [], "overlap": []}
    for b in range(batches):
        faces = make_synthetic_faces(batch_size, config.image_size, seed=1000 + b)
        images = images_to_tensor(faces.images)
        ages = torch.from_numpy(faces.ages).float()
        for seed in range(seeds):
            torch.manual_seed(seed)
            net = AttentionNet(config).train()
            params = [p for p in net.rmhha.parameters() if p.requires_grad]
            output = net(images)
            ae = age_estimation_loss(output.logits, ages, config).total
            ae_norm = gradient_norm(ae, params)
            out["L_AE"].append(ae.item())
            out["overlap"].append(head_overlap(output.attention.maps.detach()))
            for name, scale in SCALINGS.items():
                div = diversity_loss(scale(output.attention.maps))
                out[f"L_div {name}"].append(div.item())
                out[name].append(gradient_norm(config.diversity_weight * div, params) / ae_norm)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="initialisation seeds per batch")
    parser.add_argument("--batches", type=int, default=2, help="batches of drawn faces")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# diversity_gradient: {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, 1 thread; {args.seeds} seeds x {args.batches} batches of {args.batch_size}")
    print("ratio = ||grad lambda*L_div|| / ||grad L_AE|| on the RMHHA parameters at initialisation, lambda = 0.01")
    for preset in args.presets:
        tic = time.perf_counter()
        res = measure(preset, args.seeds, args.batches, args.batch_size)
        config = get_preset(preset)
        print(f"\n## preset {preset} (maps {config.heads} x {config.x_size}x{config.x_size}); "
              f"L_AE {statistics.mean(res['L_AE']):.2f}, head overlap {statistics.mean(res['overlap']):.3f} "
              f"({time.perf_counter() - tic:.0f} s)")
        print(f"{'scaling':<12}{'ratio median':>14}{'min':>11}{'max':>11}{'L_div mean':>13}")
        for name in SCALINGS:
            r = res[name]
            print(f"{name:<12}{statistics.median(r):>14.3g}{min(r):>11.3g}{max(r):>11.3g}"
                  f"{statistics.mean(res[f'L_div {name}']):>13.4g}")


if __name__ == "__main__":
    main()
