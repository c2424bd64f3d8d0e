"""How fast the embedded synthetic faces are drawn (images per second, one process).

CPU time is printed beside wall time: on a shared machine the wall time also counts waiting,
so compare the CPU rates.

    python benchmarks/synthetic_speed.py [--n 10000] [--sizes 128 64]
"""
import argparse
import time

from adpf.data.synthetic import GENERATOR_VERSION, make_synthetic_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="images per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
    args = parser.parse_args()
    print(f"generator version {GENERATOR_VERSION}")
    for size in args.sizes:
        start, cpu = time.perf_counter(), time.process_time()
        faces = make_synthetic_faces(args.n, size, seed=0)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"{args.n} faces at {size}x{size}: {seconds:.1f} s wall, {cpu:.1f} s CPU, "
              f"{args.n / seconds:.0f} images/s wall, {args.n / cpu:.0f} images/s CPU "
              f"({faces.images.nbytes / 2**20:.0f} MiB images, {faces.masks.nbytes / 2**20:.0f} MiB masks)")


if __name__ == "__main__":
    main()
