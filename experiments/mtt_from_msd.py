"""Can the MSD tagger's own features stand in for the MTT tagger (#20 with #16)? A dev measurement.

The calibrated default model runs both musicnn taggers on every patch, only so that the teacher path can read the
MTT tagger's 50 logits: twice the CPU of one backbone. If a linear map from the MSD backbone's track features
(patch means of its penultimate layer, mean- and max-pooled mid-end maps and logits: 1,756 values) predicted the
MTT logits' patch means well enough, one backbone would do (linear maps commute with the patch mean).

Per fold of the recipe's dev protocol (3 seeds), a ridge regression (scikit-learn RidgeCV, alphas 10^-1..10^4,
leave-one-out) is fitted on the fold's training tracks and predicts the MTT logits of every track. Printed: the
held-out R² per MTT tag (median, 10th percentile), and the seen-words protocol of experiments/teacher_hybrid.py
scored by the shipped rule (Y: zstag.scoring) with the real MTT logits and with the predicted ones.

    python experiments/mtt_from_msd.py      # needs build_default_model.py's cached features (~5 min)
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MSD_OUTPUTS = ("penultimate", "mean_pool", "max_pool", "logits")


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "experiments")]
    import torch
    from sklearn.linear_model import RidgeCV

    import build_default_model as B
    from teacher_hybrid import RENDERED_WORDS, Reference, label_weights, on_cosine_scale, rendered_tracks, teacher_word_logits
    from zstag.words import WordVectors

    torch.set_num_threads(1)
    glove = WordVectors.load()
    sets = {k: v for k, v in B.find_sets().items() if k not in B.NOT_ADOPTED_SETS and k not in B.SYNTHETIC_SETS}
    tracks = B.load_tracks({n: B.extract_set(n, B.read_manifest(m), log=lambda *a: None) for n, m in sets.items()})
    extra = rendered_tracks(B)
    everything = tracks + extra
    msd = np.stack([np.concatenate([t.patches[f"MSD_musicnn.{o}"].mean(axis=0) for o in MSD_OUTPUTS])
                    for t in everything]).astype(np.float64)
    mtt = np.stack([t.patches["MTT_musicnn.logits"].mean(axis=0) for t in everything]).astype(np.float64)
    config = B.replace(B.ProjectionConfig(), backbones=("MSD_musicnn",))
    table, r2s = {}, []
    for seed in range(3):
        dev, train = B.dev_fold(tracks, B.dance_split(seed))
        held = sorted(set(range(len(tracks))) - set(train))
        mean, std = msd[train].mean(axis=0), np.maximum(msd[train].std(axis=0), 1e-6)
        ridge = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit((msd[train] - mean) / std, mtt[train])
        predicted = ridge.predict((msd - mean) / std)
        resid = ((predicted[held] - mtt[held]) ** 2).sum(axis=0)
        total = ((mtt[held] - mtt[held].mean(axis=0)) ** 2).sum(axis=0)
        r2s.append(1 - resid / np.maximum(total, 1e-12))
        stand_in = [replace(t, patches={**t.patches, "MTT_musicnn.logits": p[None].astype(np.float32)})
                    for t, p in zip(everything, predicted)]
        music = [i for i in train if tracks[i].set not in B.NON_MUSIC_SETS]
        vocab = B.training_vocab(tracks, train, set())
        targets = B.make_targets([tracks[i] for i in train], vocab, config.top_k, config.pos_min)
        patches = [B.patch_inputs(tracks[i], config.backbones, config.outputs) for i in train]
        model = B.train_projection(patches, targets, glove.vectors(vocab), config, seed, [tracks[i].set for i in train])
        feats = lambda idx: np.stack([B.patch_inputs(everything[i], config.backbones, config.outputs).mean(axis=0) for i in idx])
        seen = {k: v for k, v in dev.items() if k not in (B.POOLED_DEV, B.TEACHER_DEV)}
        seen["rendered instruments (12)"] = B._dev_set(everything, list(range(len(tracks), len(everything))), list(RENDERED_WORDS))
        ref_emb = model.embed_audio(feats(music))
        for kind, source in (("real MTT logits", everything), ("MTT logits predicted from MSD", stand_in)):
            words, logits = teacher_word_logits(source)
            ref = Reference(ref_emb, logits[music])
            allowed = np.ones(len(words), dtype=bool)
            for name, s in seen.items():
                emb = model.embed_audio(feats(s["tracks"]))
                lab = model.embed_words(glove.vectors(s["labels"]))
                exact = label_weights(s["labels"], words, glove, allowed, 0)
                y = on_cosine_scale(ref, model, glove, vocab, emb, logits[s["tracks"]], lab, exact, ref_emb, logits[music])["Y T"]
                table.setdefault(kind, {}).setdefault(name, []).append(B.figures(y, s["truth"]))
    r2 = np.mean(r2s, axis=0)
    print(f"held-out R² of the 50 MTT logits (mean of 3 folds): median {np.median(r2):.3f}, "
          f"10th percentile {np.percentile(r2, 10):.3f}, min {r2.min():.3f}")
    names = list(next(iter(table.values())))
    print("\n| seen words, shipped rule (Y) | " + " | ".join(names) + " | mean hit@1 | per seed |")
    print("|---" * (len(names) + 3) + "|")
    for kind, cells in table.items():
        means = [np.mean(cells[n], axis=0) for n in names]
        per_seed = [np.mean([cells[n][s][0] for n in names]) for s in range(3)]
        print(f"| {kind} | " + " | ".join(f"{c[0]:.3f} / {c[1]:.3f}" for c in means)
              + f" | {np.mean([c[0] for c in means]):.3f} | " + ", ".join(f"{x:.3f}" for x in per_seed) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
