"""Benchmark of the ``graphs`` stage (issue 3, section 6), on synthetic token shards it writes itself.

    python benchmarks/graphs.py            # a few minutes on 2 cores
    python benchmarks/graphs.py --quick    # under a minute

1. Against the official algorithm: the stage's co-occurrence counting (``count_cooccurrence``,
   the compiled kernel and the numpy fallback) against the official notebook's per-cell Python
   loop, re-implemented here, on the same images, as a ratio. ImageNet shape (16x16, V=1024) and
   Fashion-MNIST shape (7x7, V=512).
2. Scaling: the whole stage (no picture) at three corpus sizes in ImageNet shape (16x16 tokens,
   V=1024, 1000 classes, uniform random tokens), each in its own child process so that its peak
   RSS is its own; tokens/s overall and per part.
3. ImageNet-scale projection (1.28M images, 2.56M with flips): time from a linear fit
   ``a + b * images`` per part, peak memory from the measured peaks plus the memory model of the
   polars pass (bytes per group measured in one single-pass child, times the per-pass bound).

Uniform random tokens are the worst case for the counting (no locality in the V x V table) and for
the similarity search (near-uniform position histograms defeat the candidate certificate, so every
token is re-ranked against all: that part is then a constant of about V^2 x positions work).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path, where a sibling named like a standard
# module (benchmarks/tokenize.py) shadows it; import from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pipeline.graphs.cooccurrence import count_cooccurrence  # noqa: E402
from pipeline.graphs.kernels import available_threads  # noqa: E402
from pipeline.shards import ShardWriter, TokenMeta, load_split, write_meta  # noqa: E402

IMAGENET = TokenMeta(grid_h=16, grid_w=16, codebook_size=1024, num_classes=1000,
                     tokenizer_fingerprint="bench")
SHARD_SIZE = 10_000  # tokenize's default; --quick uses smaller shards to keep several per size
IMAGENET_IMAGES = (1_281_167, 2_562_334)
GIB = 1 << 30


def write_corpus(root: Path, images: int, meta: TokenMeta, shard_size: int, seed: int = 0) -> Path:
    """Uniform random tokens and labels, written as shards of ``shard_size`` rows."""
    rng = np.random.default_rng(seed)
    with ShardWriter(root / "train", meta, shard_size) as writer:
        for start in range(0, images, shard_size):
            rows = min(shard_size, images - start)
            writer.add(np.arange(start, start + rows, dtype=np.int64),
                       rng.integers(0, meta.num_classes, rows).astype(np.int32),
                       rng.integers(0, meta.codebook_size, (rows, meta.seq_len)).astype(np.int32))
    write_meta(root, meta)
    return root


def prefix_corpus(source: Path, root: Path, images: int, shard_size: int) -> Path:
    """A corpus made of the first shards of ``source`` (symlinks, no copy)."""
    (root / "train").mkdir(parents=True)
    for shard in sorted((source / "train").glob("part-*.parquet"))[: images // shard_size]:
        (root / "train" / shard.name).symlink_to(shard)
    (root / "meta.json").symlink_to(source / "meta.json")
    return root


def official_loop(grids: np.ndarray, vocab: int) -> np.ndarray:
    """The official notebook's algorithm: per image, per cell, per direction, one increment."""
    height, width = grids.shape[1:]
    directions = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    graph = np.zeros((vocab, vocab))
    for values in grids.reshape(len(grids), -1).tolist():  # the notebook holds lists of ints
        matrix = np.array(values).reshape(height, width)
        for row in range(height):
            for col in range(width):
                centre = matrix[row, col]
                for dr, dc in directions:
                    r, c = row + dr, col + dc
                    if 0 <= r < height and 0 <= c < width:
                        graph[centre, matrix[r, c]] += 1
    return graph


def read_grids(tokens_dir: Path, images: int) -> np.ndarray:
    """The first ``images`` token grids of a token directory's train shards."""
    split = load_split(tokens_dir / "train", limit=images)
    return split.tokens.reshape(-1, split.meta.grid_h, split.meta.grid_w)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare_with_loop(name: str, big: np.ndarray, vocab: int, loop_images: int) -> dict:
    """The loop on the first ``loop_images`` grids of ``big``; each backend on those and on all of ``big``.

    "compiled" is what the stage uses (numba, on every core this process may use); "numpy" is its
    fallback without numba. Both are checked against the loop before they are timed.
    """
    grids = big[:loop_images]
    loop_s = best_of(lambda: official_loop(grids, vocab), 1)
    reference = official_loop(grids[:50], vocab)
    row = {"shape": name, "images": len(grids), "loop_us_per_image": loop_s / len(grids) * 1e6}
    for backend in ("compiled", "numpy"):
        if not np.array_equal(reference, count_cooccurrence(grids[:50], vocab, 8, backend)):
            raise AssertionError(f"{backend} counts differ from the per-cell loop")
        ours_s = best_of(lambda b=backend: count_cooccurrence(grids, vocab, 8, b), 5)
        # The same counting at shard scale, where the fixed V x V work (table, transpose) is amortised.
        ours_big_s = best_of(lambda b=backend: count_cooccurrence(big, vocab, 8, b), 3)
        row[backend] = {
            "us_per_image": ours_s / len(grids) * 1e6,
            "ratio_same_images": loop_s / ours_s,
            "us_per_image_at_scale": ours_big_s / len(big) * 1e6,
            "ratio_at_scale": (loop_s / len(grids)) / (ours_big_s / len(big)),
        }
        r = row[backend]
        print(f"  {name:<22} {backend:<8} loop {row['loop_us_per_image']:9.1f} us/img | ours "
              f"{r['us_per_image']:7.2f} us/img -> {r['ratio_same_images']:6.0f}x on the same "
              f"{len(grids)} images | {r['us_per_image_at_scale']:6.2f} us/img at {len(big)} images "
              f"-> {r['ratio_at_scale']:5.0f}x")
    return row


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True,
                         text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(tokens_dir: str, out_dir: str, groups_per_pass: str, positions_only: str) -> None:
    """Runs in a fresh process: the stage (or only its polars pass) and this process's peak RSS."""
    from pipeline.config import GraphsConfig
    from pipeline.graphs.build import build_graphs
    from pipeline.graphs.positions import count_position_tokens
    from pipeline.graphs.source import open_source

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = Path(out_dir)
    cfg = GraphsConfig(positions_groups_per_pass=int(groups_per_pass))
    start = time.perf_counter()
    if positions_only == "1":
        out.mkdir(parents=True, exist_ok=True)
        summary = count_position_tokens(open_source(tokens_dir), out / "positions.parquet",
                                        cfg.positions_groups_per_pass, 1)
        result = {"groups": summary.observed_triples, "passes": summary.passes}
    else:
        for name in ("graphs", "graphs_official"):
            (out / name).mkdir(parents=True, exist_ok=True)
        metrics = build_graphs(cfg, Path(tokens_dir), out / "graphs", out / "graphs_official",
                               tokenizer_dir=None).metrics
        result = {"seconds": metrics["seconds"], "images": metrics["images"], "tokens": metrics["tokens"],
                  "passes": metrics["incompatibility"]["polars_passes"],
                  "fallbacks": metrics["similarity"]["bruteforce_fallbacks"]}
    result["wall_s"] = time.perf_counter() - start
    result["base_rss"] = base_rss
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--tokens", help="also compare on real token shards, e.g. data/tokens")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = (5_000, 10_000, 20_000) if args.quick else (20_000, 40_000, 80_000)
    # The loop runs on these many ImageNet-shaped images (4x as many 7x7 ones): large enough that
    # the fixed V x V work of ours (tables, transpose) is amortised as in the stage.
    loop_images = 200 if args.quick else 10_000
    print(f"graphs benchmark ({'quick' if args.quick else 'default'}); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores: timings are noisy when the machine is shared")

    with tempfile.TemporaryDirectory(prefix="graphs-bench-") as tmp:
        root = Path(tmp)
        shard_size = min(SHARD_SIZE, sizes[0] // 2)
        full = write_corpus(root / "tokens-full", sizes[-1], IMAGENET, shard_size)

        print("\n1. Co-occurrence counting: official per-cell Python loop vs the stage's counting "
              f"(compiled on {available_threads()} threads; numpy fallback)")
        start = time.perf_counter()
        count_cooccurrence(np.zeros((1, 2, 2), dtype=np.int32), 2, 8, "compiled")
        print(f"  compiled kernel ready in {time.perf_counter() - start:.2f} s "
              "(compiled on first use per machine, then loaded from numba's cache)")
        # "At scale" counts a whole corpus, as the stage does: the V x V work (tables, transpose) is
        # paid once per corpus, which at 16x16 / V=1024 is worth a few thousand images.
        rows = [compare_with_loop("ImageNet 16x16 V=1024", read_grids(full, sizes[-1]), 1024, loop_images)]
        fmnist = np.random.default_rng(1).integers(0, 512, (4 * SHARD_SIZE, 7, 7))
        rows.append(compare_with_loop("F-MNIST 7x7 V=512", fmnist, 512, 4 * loop_images))
        if args.tokens:
            real = read_grids(Path(args.tokens), 4 * SHARD_SIZE)
            vocab = json.loads((Path(args.tokens) / "meta.json").read_text())["codebook_size"]
            rows.append(compare_with_loop(f"real {args.tokens}", real, vocab, 4 * loop_images))

        print("\n2. Scaling: whole stage, 16x16 tokens, V=1024, 1000 classes, uniform random tokens "
              "(one child process per size)")
        print(f"  {'images':>8} {'tokens':>11} {'total s':>8} {'tok/s':>11} {'count tok/s':>12} "
              f"{'polars tok/s':>13} {'similarity s':>13} {'peak RSS':>9}")
        runs = []
        for size in sizes:
            corpus = full if size == sizes[-1] else prefix_corpus(full, root / f"tokens-{size}", size,
                                                                  shard_size)
            run = run_child(str(corpus), str(root / f"out-{size}"), str(2**24), "0")
            s = run["seconds"]
            runs.append(run)
            print(f"  {size:>8} {run['tokens']:>11} {s['total']:>8.1f} {run['tokens'] / s['total']:>11.3g} "
                  f"{run['tokens'] / s['count']:>12.3g} {run['tokens'] / s['positions']:>13.3g} "
                  f"{s['similarity']:>13.1f} {run['peak_rss'] / GIB:>8.2f}G")

        single = run_child(str(full), str(root / "out-single"), str(2**40), "1")
        bytes_per_group = (single["peak_rss"] - single["base_rss"]) / single["groups"]
        print(f"  polars single pass over {sizes[-1]} images: {single['groups']} groups, peak RSS "
              f"{single['peak_rss'] / GIB:.2f}G (base {single['base_rss'] / GIB:.2f}G) "
              f"-> {bytes_per_group:.0f} bytes per group")

    print("\n3. ImageNet-scale projection")
    # Parts that scale with the corpus: time = tokens / throughput, at the largest size's rate or the
    # single-pass polars child's (a larger hash table, as per pass at ImageNet scale), the slower one.
    # Everything else (pruning, similarity, metrics) depends on V and positions only: the largest
    # time measured at any size.
    largest = runs[-1]
    rates = {"validate": largest["tokens"] / max(largest["seconds"]["validate"], 1e-9),
             "count": largest["tokens"] / largest["seconds"]["count"],
             "positions": min(largest["tokens"] / largest["seconds"]["positions"],
                              largest["tokens"] / single["wall_s"])}
    constant = {p: max(r["seconds"][p] for r in runs)
                for p in runs[0]["seconds"] if p not in {*rates, "total"}}
    meta = IMAGENET
    per_pass_groups = min(2**24 // (meta.seq_len * meta.codebook_size), meta.num_classes) \
        * meta.seq_len * meta.codebook_size
    polars_peak = largest["base_rss"] + per_pass_groups * bytes_per_group
    numpy_peak = max(r["peak_rss"] for r in runs)
    projection = {}
    for n in IMAGENET_IMAGES:
        tokens = n * meta.seq_len
        seconds = {**{p: tokens / rate for p, rate in rates.items()}, **constant}
        total = sum(seconds.values())
        projection[n] = {"seconds": seconds, "total_s": total, "peak_gib": max(numpy_peak, polars_peak) / GIB}
        detail = ", ".join(f"{p} {v:.0f}s" for p, v in seconds.items() if v >= 0.5)
        print(f"  {n:>9} images x 256 tokens: {total / 60:5.1f} min on this machine ({detail})")
    print(f"  peak memory: numpy pass and the rest {numpy_peak / GIB:.2f} GiB measured (independent of the "
          f"corpus size);\n  polars pass <= {per_pass_groups / 1e6:.1f}M groups per pass x "
          f"{bytes_per_group:.0f} B "
          f"+ {largest['base_rss'] / GIB:.2f} GiB base = {polars_peak / GIB:.2f} GiB"
          f"\n  -> projected peak {max(numpy_peak, polars_peak) / GIB:.2f} GiB (goal < 8 GiB)")

    summary = {"loop_comparison": rows, "scaling": runs, "bytes_per_group": bytes_per_group,
               "projection": {str(k): v for k, v in projection.items()}}
    print("\nJSON " + json.dumps(summary, default=float))


if __name__ == "__main__":
    main()
