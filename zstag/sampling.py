"""Training samples, as Choi et al. (ISMIR 2019): the tracks of a partition with their seen positive and
negative labels (TrackSet), an epoch's seeded plan of (track, positive, negatives, crop start)
(sample_plan), and the crops it names read from the feature cache (CropDataset).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zstag.features import FeatureCache

class TrackSet:
    """Tracks of one partition with their positives among the training labels (index arrays)."""

    def __init__(self, cache: FeatureCache, track_ids: list[str], labels: list[str]):
        position = {label: i for i, label in enumerate(labels)}
        self.ids, self.positives, self.negatives, self.n_frames = [], [], [], []
        for track_id in track_ids:
            entry = cache.by_id.get(track_id)
            if entry is None:
                continue  # failed in preprocess: listed in the cache's failures.csv
            positive = sorted({position[l] for l in entry.labels if l in position})
            negative = sorted(set(range(len(labels))) - set(positive))
            if not positive or not negative:
                continue
            self.ids.append(track_id)
            self.positives.append(np.asarray(positive))
            self.negatives.append(np.asarray(negative))
            self.n_frames.append(entry.n_frames)
        self.n_frames = np.asarray(self.n_frames, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)


def sample_plan(tracks: TrackSet, rng: np.random.Generator, n_samples: int, negatives: int, frames: int) -> dict:
    """n_samples (track, positive, k negatives, crop start); tracks in shuffled passes of the whole set."""
    passes = math.ceil(n_samples / len(tracks))
    order = np.concatenate([rng.permutation(len(tracks)) for _ in range(passes)])[:n_samples]
    u_pos, u_neg, u_start = rng.random(n_samples), rng.random((n_samples, negatives)), rng.random(n_samples)
    positive = np.empty(n_samples, dtype=np.int64)
    negative = np.empty((n_samples, negatives), dtype=np.int64)
    for i, t in enumerate(order):
        pos, neg = tracks.positives[t], tracks.negatives[t]
        positive[i] = pos[int(u_pos[i] * len(pos))]
        negative[i] = neg[(u_neg[i] * len(neg)).astype(np.int64)]
    room = np.maximum(tracks.n_frames[order] - frames + 1, 1)
    start = (u_start * room).astype(np.int64)
    return {"track": order, "positive": positive, "negatives": negative, "start": start}


class CropDataset(torch.utils.data.Dataset):
    """Sample i of a plan → (log-mel crop float32 [n_mels, frames], positive index, negative indices)."""

    def __init__(self, cache: FeatureCache, tracks: TrackSet, plan: dict, frames: int):
        self.cache, self.ids, self.plan, self.frames = cache, tracks.ids, plan, frames

    def __len__(self) -> int:
        return len(self.plan["track"])

    def __getitem__(self, i: int):
        crop = self.cache.crop(self.ids[self.plan["track"][i]], int(self.plan["start"][i]), self.frames)
        return torch.from_numpy(crop), int(self.plan["positive"][i]), torch.from_numpy(self.plan["negatives"][i])
