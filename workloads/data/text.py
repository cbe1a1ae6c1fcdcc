"""Token-id sequences that look like tokenised maintenance logs.

Short technician notes ("replaced bearing on pump 3, vibration high, torque checked ...") are
built from a fixed maintenance vocabulary with Zipf-distributed word frequencies and simple
note templates (asset, symptom, action, part, number); each word maps to one to three
sub-word ids in a WordPiece-sized id space, as a BERT or Llama tokenizer would split it.
"""

from __future__ import annotations

import numpy as np

NAME = "maintenance-logs"
VERSION = "1"

ASSETS = "pump motor compressor conveyor spindle gearbox valve fan boiler press robot chiller".split()
SYMPTOMS = ("vibration noise leak overheating tripped alarm misalignment wear corrosion fault "
            "blockage slippage drift pressure temperature current").split()
ACTIONS = "replaced inspected cleaned tightened lubricated adjusted reset calibrated checked".split()
PARTS = ("bearing seal belt coupling filter sensor fuse impeller shaft gasket nozzle motor "
         "encoder relay").split()
FILLER = "the on of and at after during was is high low found ok no unit line shift".split()

CLS, SEP, PAD, BOS = 101, 102, 0, 1


def _word_ids(word: str, vocab: int) -> list[int]:
    h = int.from_bytes(word.encode()[:8].ljust(8, b"_"), "little") ^ (len(word) * 0x9E3779B9)
    pieces = 1 + (len(word) > 6) + (len(word) > 10)
    lo = 1000 if vocab > 2000 else 3  # keep the special ids below
    return [lo + (h * (i + 1) * 2654435761) % (vocab - lo) for i in range(pieces)]


def _note(rng: np.random.Generator) -> list[str]:
    words = []
    for _ in range(rng.integers(1, 4)):
        clause = [rng.choice(ACTIONS), rng.choice(PARTS), "on", rng.choice(ASSETS),
                  str(rng.integers(1, 40))]
        if rng.random() < 0.7:
            clause += [rng.choice(FILLER[:6]), rng.choice(SYMPTOMS), rng.choice(FILLER[6:])]
        words += clause
    return words


def token_ids(rng: np.random.Generator, n: int, seq: int, vocab: int, *, bert: bool,
              full: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ids int64 [n, seq] and attention mask int64 [n, seq]. BERT style: [CLS] note [SEP] then
    padding; decoder style (bert=False): BOS then notes back to back. `full` fills every row."""
    ids = np.full((n, seq), PAD, np.int64)
    mask = np.zeros((n, seq), np.int64)
    # Zipf-weighted rare words stand in for part numbers, names and free text
    for i in range(n):
        toks = [CLS] if bert else [BOS]
        target = seq if (full or not bert) else int(rng.integers(seq // 4, seq + 1))
        while len(toks) < target:
            for w in _note(rng):
                toks += _word_ids(w, vocab)
            if rng.random() < 0.3:
                toks.append(int(min(vocab - 1, rng.zipf(1.3) + (1000 if vocab > 2000 else 3))))
        toks = toks[: target - 1] + [SEP] if bert else toks[:target]
        ids[i, : len(toks)] = toks
        mask[i, : len(toks)] = 1
    return ids, mask
