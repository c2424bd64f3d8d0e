"""The same benchmark as ``adpf benchmark``, runnable from a checkout without installing adpf.

    python benchmarks/run_benchmark.py --presets cpu --out benchmarks/results/cpu.md
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adpf import benchmark  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=benchmark.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_arguments(parser)
    sys.exit(benchmark.run(parser.parse_args()))
