"""CPU cost of box finding (``patches.maps_to_boxes``) per batch: the component labels against the flood fill they replaced.

    python benchmarks/box_speed.py [--batch-size 32] [--repeats 7] [--threads 1] [--out FILE]

For both presets' sizes (``cpu``: 16×16 maps → 64 px boxes; ``paper``: 32×32 → 128 px), a batch
of B images × 5 heads, maps drawn two ways (``smooth``: 5×5-averaged noise, like trained
attention maps; ``rough``: plain noise, many small regions), three implementations of the same
rule, timed in interleaved rounds in the same run (median):

``labels``      today's torch path: ``_component_labels``, a fixed number of rounds, no host sync;
``flood fill``  the torch path it replaced (commit 55c8a69, copied below): grow the region from
                the peak (3×3 dilation and run filling), round after round on the maps still
                growing, until nothing changes (each round asks the host whether to go on);
``cv2``         the reference, ``cv2.findContours`` per map on the host.

Each row also says whether the three gave identical boxes. Threshold and box squaring are the
same code in all three and are timed with them.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adpf import patches  # noqa: E402
from adpf.config import get_preset  # noqa: E402


def _fill_runs(region: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(55c8a69) Grow ``region`` ``(M, S, S)`` bool to every run of consecutive ``mask`` pixels along x it touches."""
    starts = mask.clone()
    starts[..., 1:] &= ~mask[..., :-1]
    run = starts.cumsum(dim=-1)
    touched = torch.zeros(*mask.shape[:-1], mask.shape[-1] + 1, dtype=torch.int32, device=mask.device)
    touched.scatter_add_(-1, run, (region & mask).int())
    return (touched.gather(-1, run) > 0) & mask


def _dilate(region: torch.Tensor) -> torch.Tensor:
    """(55c8a69) 3×3 binary dilation of ``(M, S, S)`` bool."""
    tall = region.clone()
    tall[:, 1:] |= region[:, :-1]
    tall[:, :-1] |= region[:, 1:]
    wide = tall.clone()
    wide[:, :, 1:] |= tall[:, :, :-1]
    wide[:, :, :-1] |= tall[:, :, 1:]
    return wide


def flood_fill_regions(masks: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """(55c8a69) Step 3 by flood fill from the peak, until no map grows (a host sync per round)."""
    m, s, _ = masks.shape
    region = torch.zeros_like(masks)
    region[torch.arange(m, device=masks.device), peaks[:, 0], peaks[:, 1]] = True
    active = torch.arange(m, device=masks.device)
    while len(active):
        grown, mask = region[active], masks[active]
        new = _dilate(grown) & mask
        new = _fill_runs(new, mask)
        new = _fill_runs(new.transpose(1, 2), mask.transpose(1, 2)).transpose(1, 2)
        region[active] = new
        active = active[(new != grown).flatten(1).any(dim=1)]
    rows, cols = region.any(dim=2), region.any(dim=1)
    y0, x0 = rows.int().argmax(dim=1), cols.int().argmax(dim=1)
    y1, x1 = s - rows.flip(1).int().argmax(dim=1), s - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def boxes_with(regions, maps: torch.Tensor, image_size: int) -> torch.Tensor:
    """``maps_to_boxes`` with the default rule (mean threshold, 0.15–0.6 of the side), step 3 by ``regions``."""
    b, n, h, w = maps.shape
    masks, peaks, _ = patches._threshold_masks(maps.reshape(b * n, h, w), image_size, "mean")
    min_side, max_side = round(0.15 * image_size), round(0.6 * image_size)
    return patches._square_boxes(regions(masks, peaks), peaks, image_size, min_side, max_side).reshape(b, n, 4)


def measure(maps: torch.Tensor, image_size: int, repeats: int) -> dict[str, float]:
    """Median seconds per batch of each implementation, in interleaved rounds; and whether they agree."""
    calls = {"labels": lambda: patches.maps_to_boxes(maps, image_size),
             "flood fill": lambda: boxes_with(flood_fill_regions, maps, image_size),
             "cv2": lambda: patches.maps_to_boxes(maps, image_size, method="cv2")}
    results = {name: call() for name, call in calls.items()}  # warm-up, and the boxes to compare
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    out = {name: statistics.median(t) for name, t in times.items()}
    out["identical"] = all(torch.equal(results["labels"], r) for r in results.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds, the median is shown (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"# Box finding, CPU cost per batch ({time.strftime('%Y-%m-%d')})", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); batch {args.batch_size} images "
             f"× 5 heads; median of {args.repeats} interleaved rounds; `python benchmarks/box_speed.py`.",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f} at the start (on a shared machine the times are inflated alike; "
             "the ratios come from interleaved rounds).", "",
             "| preset | maps | labels, ms | flood fill, ms | cv2, ms | labels ÷ flood fill | identical boxes |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for preset in ("cpu", "paper"):
        config = get_preset(preset)
        h = config.x_size
        torch.manual_seed(0)
        drawn = {"smooth": F.avg_pool2d(torch.randn(args.batch_size, config.heads, h + 4, h + 4), 5, 1),
                 "rough": torch.randn(args.batch_size, config.heads, h, h)}
        for kind, maps in drawn.items():
            r = measure(maps, config.image_size, args.repeats)
            line = (f"| {preset} ({h}² → {config.image_size}²) | {kind} | {1e3 * r['labels']:.1f} | "
                    f"{1e3 * r['flood fill']:.1f} | {1e3 * r['cv2']:.1f} | {r['labels'] / r['flood fill']:.2f} | "
                    f"{'yes' if r['identical'] else 'NO'} |")
            print(line, flush=True)
            lines.append(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
