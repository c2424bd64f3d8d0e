"""CPU time of one ADPF stage-2 training step, boxes found in the step against boxes found once.

    python benchmarks/stage2_step.py [--preset cpu] [--batch-size 32] [--repeats 15] [--threads 1]

Both are `adpf.train.train_step` on the same augmented batch of drawn faces, with the same
frozen AttentionNet and the `cpu` recipe's optimiser, timed in interleaved rounds in one run
(median and the ratio of the medians):

``every step``  ``recipe.fusion_boxes="every_step"`` (the paper's pipeline): the frozen
                AttentionNet's forward pass and the box rule on every augmented face, then the
                crops and FusionNet's forward and backward passes;
``once``        ``"once"``: the boxes of the faces as stored (found before the first epoch,
                not timed here) moved with the augmentation (`adpf.patches.move_boxes`), then
                the same crops and FusionNet.

The time to find the stored boxes once (an evaluation pass over the training faces) is printed
per face, so a reader can add it to an epoch. Results: benchmarks/results/stage2_step.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adpf.config import get_preset  # noqa: E402
from adpf.data.prepared import augment_batch, default_dataset, draw_offsets, load_prepared  # noqa: E402
from adpf.networks import ADPF  # noqa: E402
from adpf.recipes import get_recipe  # noqa: E402
from adpf.train import EpochTally, Stage, StoredBoxes, make_optimizer, make_scheduler, train_step  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_preset(args.preset)
    recipe = get_recipe("cpu")
    data = load_prepared(default_dataset(image_size=config.image_size, n=max(200, args.batch_size), progress=False))
    b, pad = args.batch_size, config.image_size // 16
    stored_faces = torch.from_numpy(data.images[:b].copy())
    offsets = draw_offsets(b, config.image_size, pad, torch.Generator().manual_seed(0))
    images = augment_batch(stored_faces, offsets, pad).contiguous()
    age = torch.tensor(data.meta["age"].to_numpy()[:b], dtype=torch.float32)
    model = ADPF(config).freeze_attention().train()
    stage = Stage("fusion", config, 1, "bench")
    optimizer = make_optimizer(recipe, [q for q in model.fusion_net.parameters() if q.requires_grad])
    scheduler = make_scheduler(recipe, optimizer, 10 ** 6, 1)

    def found_once() -> torch.Tensor:
        with torch.no_grad():
            return model.attend(stored_faces.permute(0, 3, 1, 2).float().div(255))[1]

    stored = StoredBoxes(found_once(), pad, config.image_size)
    batch = {"index": torch.arange(b), "offsets": offsets}

    def every_step() -> None:
        train_step(stage, 0, model, images, age, optimizer, scheduler, recipe, EpochTally(torch.device("cpu")))

    def once() -> None:
        train_step(stage, 0, model, images, age, optimizer, scheduler, recipe, EpochTally(torch.device("cpu")),
                   stored.moved(batch))

    timings = {"every step": [], "once": [], "finding the stored boxes": []}
    for fn in (every_step, once, found_once):  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in (("every step", every_step), ("once", once), ("finding the stored boxes", found_once)):
            tic = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - tic)
    median = {name: statistics.median(t) for name, t in timings.items()}
    print(f"ADPF stage 2, preset {args.preset} ({config.image_size} px), batch {b}, {args.threads} thread(s), "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"median of {args.repeats} interleaved rounds")
    print(f"  step, boxes every step: {1000 * median['every step']:.1f} ms")
    print(f"  step, boxes found once: {1000 * median['once']:.1f} ms "
          f"({median['every step'] / median['once']:.2f}x faster)")
    print(f"  finding the stored boxes, once per face: {1000 * median['finding the stored boxes'] / b:.2f} ms a face")


if __name__ == "__main__":
    main()
