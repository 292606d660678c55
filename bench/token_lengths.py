"""How long measuring the rows takes before the model loads (``data.token_lengths``, the tokenizer only).

    OMP_NUM_THREADS=1 python bench/token_lengths.py

50,000 synthetic Alpaca rows (10-80 word instructions, 20-300 word answers), the demo tokenizer; a dataset of more
than ``LENGTH_SAMPLE`` (10,000) rows is measured on an evenly spaced sample. Result in docs/memory.md.
"""

from __future__ import annotations

import random
import time

from datasets import Dataset
from transformers import AutoTokenizer

from rslora_colab import demo_model, load_and_validate
from rslora_colab.data import token_lengths

WORDS = ("the model reads every row before training and plans the memory of the longest batch it can build from "
         "the data rather than from the length limit alone").split()


def main(rows: int = 50_000) -> None:
    rng = random.Random(0)
    data = [{"instruction": " ".join(rng.choices(WORDS, k=rng.randint(10, 80))), "input": "",
             "output": " ".join(rng.choices(WORDS, k=rng.randint(20, 300)))} for _ in range(rows)]
    dataset, fmt = load_and_validate(Dataset.from_list(data))
    tokenizer = AutoTokenizer.from_pretrained(demo_model())
    start = time.perf_counter()
    lengths = token_lengths(dataset, fmt, tokenizer)
    wall = time.perf_counter() - start
    print(f"{rows:,} {fmt} rows: {len(lengths.rows):,} measured (sampled: {lengths.sampled}) in {wall:.1f} s; "
          f"longest {max(lengths.total)} tokens, median {sorted(lengths.total)[len(lengths.total) // 2]}")


if __name__ == "__main__":
    main()
