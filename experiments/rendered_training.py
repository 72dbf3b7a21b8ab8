"""Rendered instruments as training data for the projection (#16 item 1): the *seen-words* half of the measurement.

The projection of recipes/build_default_model.py (shipped configuration) trained per dance-split seed on the fold's
training tracks with every word (gcompris never trained on), without and with the rendered-instruments set
(recipes/build_rendered_instruments.py) at the shares of the recipe's ``--grid rendered``; scored by cosine on the
26 gcompris solo instruments, the 9 gcompris styles, the dance songs' 5 unseen styles and the 12 teacher words
(teacher positives). Each set is scored two ways: the cosine, and the default model's scores (Y: a teacher word by
the taggers, every other label by the cosine on one shared scale; zstag.scoring through experiments/teacher_hybrid.py's
``on_cosine_scale``, reference = the fold's real training music). Under Y the teacher-words set is scored by the
taggers alone (the same for every projection) and is left out; a rendered seen set (teacher_hybrid's 72 clips) is
added, restricted to the clips no configuration of the grid trains on (``--grid rendered2``: the teacher-word clips
the nonteacher variant leaves out) and left out for a configuration that trains on any of them.
The zero-shot half is the recipe's dev stage: ``python recipes/build_default_model.py --stage dev --grid rendered``
(or ``rendered2``). Rule and tables: models/default/EXPERIMENTS.md.

    python experiments/rendered_training.py [--seeds 3] [--grid rendered2]   # needs the recipe's cached features
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "experiments")]
    import build_default_model as B

    import teacher_hybrid as TH

    from zstag.words import WordVectors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grid", default="rendered", choices=("rendered", "rendered2"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # small heads on a shared machine
    words = WordVectors.load()
    sets = {k: v for k, v in B.find_sets().items() if k not in B.NOT_ADOPTED_SETS}
    missing = B.missing_sets(sets) + [n for n in B.SYNTHETIC_SETS if n not in sets]
    if missing:
        raise SystemExit(f"rendered_training: {B.missing_message(missing)}")
    tracks = B.load_tracks({n: B.extract_set(n, B.read_manifest(m), log=lambda *a: None) for n, m in sets.items()})
    synthetic = B.synthetic_training(tracks, words, set())
    configs = B.grid_configs(args.grid)
    trained_clips = {c.name(): {tracks[i].id for i in B.synthetic_clips(tracks, synthetic, c)} for c in configs}
    rendered = rendered_seen_set(TH, B, tracks, trained_clips)
    everything = tracks + rendered
    teacher, logits = TH.teacher_word_logits(everything)
    results = {(c.name(), kind): {} for c in configs for kind in ("cosine", "Y")}
    for seed in range(args.seeds):
        dev, train = B.dev_fold(tracks, B.dance_split(seed))
        music = [i for i in train if tracks[i].set not in B.NON_MUSIC_SETS]  # the reference: real music only
        scored = {k: v for k, v in dev.items() if k != B.POOLED_DEV}
        if rendered:
            extra = list(range(len(tracks), len(everything)))
            scored[f"rendered instr. ({len(rendered)} untrained clips)"] = B._dev_set(everything, extra, list(TH.RENDERED_WORDS))
        for config in configs:
            idx = train + B.synthetic_clips(tracks, synthetic, config)
            vocab = B.training_vocab(tracks, idx, set())
            targets = B.make_targets([tracks[i] for i in idx], vocab, config.top_k, config.pos_min)
            patches = [B.patch_inputs(tracks[i], config.backbones, config.outputs) for i in idx]
            model = B.train_projection(patches, targets, words.vectors(vocab), config, seed, [tracks[i].set for i in idx])
            feats = lambda ids: np.stack([B.patch_inputs(everything[i], config.backbones, config.outputs).mean(axis=0)
                                          for i in ids])
            ref_emb = model.embed_audio(feats(music))
            ref = TH.Reference(ref_emb, logits[music])
            for name, s in scored.items():
                if name.startswith("rendered") and trained_clips[config.name()] & {everything[i].id for i in s["tracks"]}:
                    continue  # circular: this configuration trains on these clips
                emb, lab = model.embed_audio(feats(s["tracks"])), model.embed_words(words.vectors(s["labels"]))
                exact = TH.label_weights(s["labels"], teacher, words, np.ones(len(teacher), bool), 0)
                y = TH.on_cosine_scale(ref, model, words, vocab, emb, logits[s["tracks"]], lab, exact, ref_emb,
                                       logits[music])["Y T"]
                trained = sum(label in vocab for label in s["labels"])
                for kind, sc in (("cosine", B.cosine(emb, lab)), ("Y", y)):
                    if kind == "Y" and name == B.TEACHER_DEV:
                        continue  # the taggers' own positives, scored by the taggers alone under Y
                    results[(config.name(), kind)].setdefault(name, []).append((*B.figures(sc, s["truth"]), trained))
            print(f"seed {seed}: {config.name()}: " + ", ".join(
                f"{kind} {n} {r[-1][0]:.3f}/{r[-1][1]:.3f}" for (c, kind), table in results.items() if c == config.name()
                for n, r in table.items()), flush=True)
    print_table(results, args.seeds)
    return 0


def rendered_seen_set(TH, B, tracks, trained_clips: dict[str, set[str]]) -> list:
    """teacher_hybrid's fixed rendered clips, minus those trained on by a configuration that trains on only some
    of them (a configuration trained on all of them is not scored on the set: it would be circular)."""
    by_id = {t.id: t for t in tracks}
    chosen = [by_id[t.id] for t in TH.rendered_tracks(B)]
    partial = [ids for ids in trained_clips.values() if not {t.id for t in chosen} <= ids]
    return [t for t in chosen if not any(t.id in ids for ids in partial)]


def print_table(results, seeds: int) -> None:
    print(f"\n### seen words (hit@1 / retrieval ROC-AUC; mean of {seeds} seeds; [labels among the training words])\n")
    names = list(dict.fromkeys(n for table in results.values() for n in table))
    instruments = next(n for n in names if n.startswith("gcompris instruments"))
    print("| projection | scores | " + " | ".join(names) + " | gcompris instr. hit@1 per seed |")
    print("|---" * (len(names) + 3) + "|")
    for (config, kind), table in results.items():
        cells = [np.mean(table[n], axis=0) if n in table else None for n in names]
        print(f"| {config} | {kind} | " + " | ".join("—" if c is None else f"{c[0]:.3f} / {c[1]:.3f} [{c[3]:.0f}]"
                                                    for c in cells)
              + " | " + ", ".join(f"{r[0]:.3f}" for r in table[instruments]) + " |")


if __name__ == "__main__":
    sys.exit(main())
