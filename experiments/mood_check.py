"""Moods (issue #22): the four quadrant words (happy / angry / sad / calm, argmax) on the mood dev sets, before and
after zstag/moods.py's valence–arousal path; and which other labels the rule touches.

Sets (recipes/build_mood_sets.py): moods-rendered (seed 0) and moods-rendered-tune (seed 1), quadrants fixed by
construction (features: experiments/mood_extract.py), and moods-game-titles (real game music labelled by a
written title-word table; features: the recipe's own cache). Nothing here is fitted on any of them:

- baseline: the shipped default model (cosine of the trained projection of MSD_musicnn's patch-mean penultimate,
  exactly what `zstag tag` computes: the head is linear, so the mean of projections is the projection of the mean);
- mood path: track (valence, arousal) from the taggers' mood/energy words standardised over the reference library
  (the recipe's training music: dance, gcompris and the game sets, minus the moods-game-titles clips), words'
  (valence, arousal) from GloVe seed pairs (test words not seeds), combined by the label's gate.

Rows also isolate each side: "oracle words" gives the four test words their true quadrant direction (how good the
track side is alone); "word axes → tags" reads the teacher words out through the word side itself (no table);
"+ loudness" adds the track's RMS level to arousal (circular on the rendered sets: their loudness is part of the
construction). No randomness in the mood path: the two rendered seeds are the repeat.

    python experiments/mood_check.py     # needs mood_extract.py's and build_default_model.py's cached features
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUADRANTS = ("happy", "angry", "sad", "calm")
ORACLE = {"happy": (1.0, 1.0), "angry": (-1.0, 1.0), "sad": (-1.0, -1.0), "calm": (1.0, -1.0)}
MOOD_SETS = ("moods-rendered", "moods-rendered-tune", "moods-game-titles")


def load(B, name: str, cache) -> list:
    """A mood set's tracks (recipe TrackData); titles: features under their own game set's name."""
    import mood_extract

    rows = B.read_manifest(cache / "sets" / name / "manifest.csv")
    if name == "moods-game-titles":
        out = []
        for r in rows:
            game = r["title"].split(":")[0]
            path = B.feature_path(game, r["path"])
            if path.exists():
                out.append({**r, "features": str(path)})
        return B.load_tracks({name: out}), [Path(r["features"]).name for r in out]
    saved = B.FEATURES
    B.FEATURES = mood_extract.MOOD_FEATURES
    try:
        rows = [{**r, "features": str(B.feature_path(name, r["path"]))} for r in rows]
    finally:
        B.FEATURES = saved
    rows = [r for r in rows if Path(r["features"]).exists()]
    return B.load_tracks({name: rows}), [Path(r["features"]).name for r in rows]


def accuracy_table(scores: np.ndarray, truth: list[str]) -> tuple[float, dict]:
    """(accuracy, true word → predicted-word counts)."""
    pred = [QUADRANTS[i] for i in scores.argmax(axis=1)]
    conf = {t: {p: 0 for p in QUADRANTS} for t in QUADRANTS}
    for t, p in zip(truth, pred):
        conf[t][p] += 1
    return float(np.mean([t == p for t, p in zip(truth, pred)])), conf


def penultimates(tracks) -> np.ndarray:
    return np.stack([np.concatenate([t.patches[f"{b}.penultimate"].mean(axis=0) for b in ("MSD_musicnn", "MTT_musicnn")])
                     for t in tracks])


def fit_on_renders(tune, reference):
    """A ridge head from both penultimates (standardised over the reference library) to the tune renders' quadrant
    signs (valence, arousal): supervised on synthetic clips of another seed than moods-rendered; its test of
    transfer is moods-game-titles. Returns tracks → [N, 2], standardised over the reference."""
    from sklearn.linear_model import RidgeCV

    x_ref = penultimates(reference)
    mu, sd = x_ref.mean(axis=0), np.maximum(x_ref.std(axis=0), 1e-6)
    y = np.array([ORACLE[t.labels[0]] for t in tune])
    head = RidgeCV(alphas=np.logspace(0, 5, 11)).fit((penultimates(tune) - mu) / sd, y)
    ref_out = head.predict((x_ref - mu) / sd)
    m, s = ref_out.mean(axis=0), ref_out.std(axis=0)
    print(f"head on rendered-tune quadrants: alpha {head.alpha_:g}")
    return lambda tracks: (head.predict((penultimates(tracks) - mu) / sd) - m) / s


def mean_recall(conf: dict) -> float:
    return float(np.mean([conf[q][q] / max(1, sum(conf[q].values())) for q in QUADRANTS]))


def axis_aucs(va: np.ndarray, truth: list[str]) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    pos_v = [ORACLE[t][0] > 0 for t in truth]
    pos_a = [ORACLE[t][1] > 0 for t in truth]
    return roc_auc_score(pos_v, va[:, 0]), roc_auc_score(pos_a, va[:, 1])


def fit_readouts(reference, keys, z_ref):
    """Ridge read-outs fitted on the reference library to its acoustic descriptors (experiments/mood_descriptors.py):
    valence target z(mode), arousal target mean(z(onset), z(rms_db)); alpha by efficient leave-one-out (RidgeCV).
    Returns ([K, 2] matrix on teacher values, tracks → [N, 2] standardised read-out of both penultimates)."""
    import json

    from sklearn.linear_model import RidgeCV

    import mood_descriptors

    table = json.loads(mood_descriptors.OUT.read_text())
    have = [i for i, k in enumerate(keys) if k in table]
    d = {f: np.array([table[keys[i]][f] for i in have]) for f in ("mode", "onset", "rms_db")}
    z = {f: (v - v.mean()) / v.std() for f, v in d.items()}
    y = np.stack([z["mode"], (z["onset"] + z["rms_db"]) / 2], axis=1)
    alphas = np.logspace(-1, 4, 11)
    teacher = RidgeCV(alphas=alphas).fit(z_ref[have], y)
    print(f"descriptor targets: {len(have)} reference tracks (described by experiments/mood_descriptors.py); ridge on teacher words: alpha {teacher.alpha_:g}")
    pen = penultimates
    x = pen([reference[i] for i in have])
    mu, sd = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    head = RidgeCV(alphas=alphas * 10).fit((x - mu) / sd, y)
    out_ref = head.predict((x - mu) / sd)
    m, s = out_ref.mean(axis=0), out_ref.std(axis=0)
    print(f"ridge on both penultimates: alpha {head.alpha_:g}")
    ref_d = {f: (v.mean(), v.std()) for f, v in d.items()}

    def descriptor_va(names):
        """[N, 2]: (z(mode), mean(z(onset), z(rms_db))) with the reference's statistics; NaN where not described."""
        zd = lambda k, f: (table[k][f] - ref_d[f][0]) / ref_d[f][1] if k in table else np.nan
        return np.array([[zd(k, "mode"), (zd(k, "onset") + zd(k, "rms_db")) / 2] for k in names])

    return teacher.coef_.T, lambda tracks: (head.predict((pen(tracks) - mu) / sd) - m) / s, descriptor_va


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "experiments")]
    import torch

    import build_default_model as B
    from teacher_hybrid import teacher_word_logits
    from zstag import modelfile, moods
    from zstag.model import load_model
    from zstag.paths import cache_dir
    from zstag.words import WordVectors

    torch.set_num_threads(1)
    glove = WordVectors.load()
    model = load_model("default")
    loaded = {n: load(B, n, cache_dir()) for n in MOOD_SETS}
    sets = {n: v[0] for n, v in loaded.items()}
    titled = {t.id for t in sets["moods-game-titles"]}
    music = {k: v for k, v in B.find_sets().items() if k not in B.NOT_ADOPTED_SETS + B.SYNTHETIC_SETS and k not in B.NON_MUSIC_SETS
             and k not in B.TEST_SETS}
    ref_rows = {n: B.extract_set(n, B.read_manifest(m), log=lambda *a: None) for n, m in music.items()}
    keys = [Path(r["features"]).name for rows in ref_rows.values() for r in rows]
    everything = B.load_tracks(ref_rows)
    reference = [t for t in everything if t.id not in titled]
    keys = [k for k, t in zip(keys, everything) if t.id not in titled]
    words, ref_logits = teacher_word_logits(reference)
    mu, sigma = ref_logits.mean(axis=0), np.maximum(ref_logits.std(axis=0), 1e-6)

    axes = moods.MoodAxes.from_words(glove)
    word_va = axes.coords(glove.vectors(list(QUADRANTS)))
    gates = moods.gate(axes.moodness(glove.vectors(list(QUADRANTS))))
    oracle_va = np.array([ORACLE[q] for q in QUADRANTS])
    label_emb = model.embed_label_vectors(glove.vectors(list(QUADRANTS)))  # the joint space's label side
    shipped_rows = modelfile.label_embeddings(model, glove, list(QUADRANTS))  # the model's own scores (tag's)
    encoder = model.config["audio_encoder"]
    d = int(model.config["embed_dim"])

    def embed(tracks):
        """The model's track embeddings from cached patches, as `zstag tag` computes them (linear heads: the
        mean of projections is the projection of the mean)."""
        feats = np.stack([B.patch_inputs(t, encoder["backbones"], encoder["outputs"]).mean(axis=0) for t in tracks])
        return model.project_features(feats)

    table = moods.track_matrix(words)
    tag_moods = moods.word_moods(glove, words, axes)  # the word side read on the teacher words themselves
    word_table = np.array([[m.gate * m.valence, m.gate * m.arousal] for m in tag_moods])
    z_ref = (ref_logits - mu) / sigma
    read = {"table": moods.TrackAxes.fit(z_ref, table), "word axes → tags": moods.TrackAxes.fit(z_ref, word_table)}
    fitted, penult, descriptor_va = fit_readouts(reference, keys, z_ref)
    read["ridge to descriptors"] = moods.TrackAxes.fit(z_ref, fitted)
    read["ridge valence + table arousal"] = moods.TrackAxes.fit(z_ref, np.stack([fitted[:, 0], table[:, 1]], axis=1))
    loud_ref = np.array([t.stats["loudness_dbfs"] or np.nan for t in reference])
    loud_mu, loud_sd = np.nanmean(loud_ref), np.nanstd(loud_ref)

    print(f"reference library: {len(reference)} music tracks ({', '.join(sorted(music))}, minus {len(titled)} titled)")
    print("word side (seeds only): " + ", ".join(f"{q} ({v:+.2f}, {a:+.2f}) gate {g:.2f}"
                                               for q, (v, a), g in zip(QUADRANTS, word_va, gates)))
    print("teacher words voting by the word side: " + ", ".join(f"{m.label} {m.gate:.2f}" for m in tag_moods if m.gate > 0))
    results, axes_auc = {}, {}
    render_head = fit_on_renders(sets["moods-rendered-tune"], reference)
    ref_joint = modelfile.cosine_scores(embed(reference)[:, :d], label_emb).astype(np.float64)
    joint_mu, joint_sd = ref_joint.mean(axis=0), ref_joint.std(axis=0)
    for name, tracks in sets.items():
        truth = [t.labels[0] for t in tracks]
        emb = embed(tracks)
        joint = modelfile.cosine_scores(emb[:, :d], label_emb)
        _, logits = teacher_word_logits(tracks)
        z = (logits - mu) / sigma
        loud = np.array([((t.stats["loudness_dbfs"] or loud_mu) - loud_mu) / loud_sd for t in tracks])
        rows = {"shipped default model": model.scores(emb, shipped_rows), "its joint space alone (cosine)": joint}
        for rname, reader in read.items():
            va = reader(z)
            rows[f"mood path: tags by {rname}, words by seeds"] = moods.combine(joint, moods.mood_scores(va, word_va), gates)
            rows[f"  {rname}, oracle words (track side alone)"] = moods.mood_scores(va, oracle_va)
            axes_auc.setdefault(rname, {})[name] = axis_aucs(va, truth)
        va = read["table"](z)
        va_loud = va + np.stack([np.zeros_like(loud), loud], axis=1)
        rows["  table + loudness (circular on renders), oracle words"] = moods.mood_scores(va_loud, oracle_va)
        rows["  table + loudness, words by seeds"] = moods.combine(joint, moods.mood_scores(va_loud, word_va), gates)
        zj = (joint - joint_mu) / joint_sd  # each word's cosine as a z-score over the reference library
        rows["joint z-scored per word over the reference (calibration)"] = zj
        for rname in ("table", "ridge valence + table arousal"):
            va = read[rname](z)
            rows[f"joint z + mood (tags by {rname}, words by seeds)"] = zj + va @ moods._unit(word_va).T
            rows[f"  joint z + mood ({rname}), oracle words"] = zj + va @ moods._unit(oracle_va).T
        dva = descriptor_va(loaded[name][1])  # NaN rows: not described
        if np.isfinite(dva).all():
            axes_auc.setdefault("descriptors themselves: mode / mean z(onset, rms) (librosa on the audio)", {})[name] = axis_aucs(dva, truth)
            va_mix = np.stack([dva[:, 0], read["table"](z)[:, 1]], axis=1)
            axes_auc.setdefault("mode descriptor valence + table arousal", {})[name] = axis_aucs(va_mix, truth)
            rows["  mode descriptor valence + table arousal (librosa at tag time), oracle words"] = moods.mood_scores(va_mix, oracle_va)
            rows["  mode descriptor valence + table arousal, words by seeds"] = moods.combine(joint, moods.mood_scores(va_mix, word_va), gates)
        va_r = render_head(tracks)  # fitted on moods-rendered-tune: its column there is a training fit, not a measure
        axes_auc.setdefault("head fitted on moods-rendered-tune quadrants (supervised on renders)", {})[name] = axis_aucs(va_r, truth)
        rows["  head fitted on rendered-tune quadrants, oracle words"] = moods.mood_scores(va_r, oracle_va)
        rows["  head fitted on rendered-tune quadrants, words by seeds"] = moods.combine(joint, moods.mood_scores(va_r, word_va), gates)
        va_pen = penult(tracks)
        axes_auc.setdefault("ridge on both penultimates", {})[name] = axis_aucs(va_pen, truth)
        rows["  ridge on both penultimates (400-d; information), oracle words"] = moods.mood_scores(va_pen, oracle_va)
        rows["  ridge on both penultimates, words by seeds"] = moods.combine(joint, moods.mood_scores(va_pen, word_va), gates)
        results[name] = {k: accuracy_table(v, truth) for k, v in rows.items()}
        results[name]["n"] = {q: truth.count(q) for q in QUADRANTS}
    print("\naccuracy / mean recall over the four words (the titles are 24 angry of 48: mean recall is the fairer "
          "figure there; chance 0.25)")
    print("\n| method | " + " | ".join(f"{n} ({sum(results[n]['n'].values())})" for n in MOOD_SETS) + " |")
    print("|---" * (len(MOOD_SETS) + 1) + "|")
    for method in [k for k in results[MOOD_SETS[0]] if k != "n"]:
        print(f"| {method} | " + " | ".join(f"{results[n][method][0]:.3f} / {mean_recall(results[n][method][1]):.3f}"
                                            for n in MOOD_SETS) + " |")
    print("\ntrack side alone: ROC-AUC of the track's valence for the positive-valence quadrants (happy, calm) and "
          "of its arousal for the high-arousal ones (happy, angry)\n")
    print("| track read-out | " + " | ".join(f"{n} valence / arousal" for n in MOOD_SETS) + " |")
    print("|---" * (len(MOOD_SETS) + 1) + "|")
    for rname, cells in axes_auc.items():
        print(f"| {rname} | " + " | ".join(f"{cells[n][0]:.3f} / {cells[n][1]:.3f}" for n in MOOD_SETS) + " |")
    for name in MOOD_SETS:
        print(f"\n#### {name}: per word (recall = correct / clips of that quadrant; row: truth, columns: argmax)\n")
        for method in ("shipped default model", "its joint space alone (cosine)", "mood path: tags by table, words by seeds",
                       "  table, oracle words (track side alone)", "  mode descriptor valence + table arousal, words by seeds",
                       "  head fitted on rendered-tune quadrants, oracle words"):
            method_key = method if method in results[name] else None
            acc, conf = results[name][method_key] if method_key else (None, None)
            if conf is None:
                continue
            print(f"{method.strip()}: accuracy {acc:.3f}")
            print("| truth \\ argmax | " + " | ".join(QUADRANTS) + " | recall |")
            print("|---" * 6 + "|")
            for q in QUADRANTS:
                n = max(1, sum(conf[q].values()))
                print(f"| {q} | " + " | ".join(str(conf[q][p]) for p in QUADRANTS) + f" | {conf[q][q] / n:.2f} |")
            print()
    untouched = [label for label in model.train_labels if moods.gate(axes.moodness(glove.vectors([label])))[0] > 0]
    print("training labels the gate touches (all others keep their scores bit for bit): " + ", ".join(
        f"{m.label} {m.gate:.2f}" for m in moods.word_moods(glove, untouched, axes)))
    dev_words = sorted({w for s in (B.DANCE_UNSEEN, B.TEACHER_DEV_WORDS) for w in s})
    print("recipe dev words the gate touches: " + (", ".join(
        f"{m.label} {m.gate:.2f}" for m in moods.word_moods(glove, dev_words, axes) if m.gate > 0) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
