"""Teacher labels: the musicnn backbones' 50-tag outputs, as label words.

MSD_musicnn was trained on Last.fm tags of the Million Song Dataset, MTT_musicnn on MagnaTagATune;
their tags are spelled for those corpora ("female vocalists", "no vocal", "00s", "rnb", "classic").
``TAG_WORDS`` maps each tag to the label word it means, so that

- duplicates merge ("female vocalist", "female vocal", "female voice", "woman", "female" → "female vocals";
  "chill" → "chillout"; "choral" → "choir"; "beat" → "beats"; "classic" → "classical"),
- negations become the positive word they imply ("no vocals", "no vocal", "no voice" → "instrumental"),
- spellings become what a user types ("00s" → "2000s", "rnb" → "r&b", "Hip-Hop" → "hip-hop").

A word's teacher probability for a track is, per backbone, the highest probability among its tags that
map to the word, then the mean over the backbones that have the word.

ConSE (Norouzi et al., 2014), the training-free baseline: the track is the probability-weighted mean of
the word vectors of its top-T tags (each tag through its mapped word), compared with the label's word
vector by cosine; ``conse_model`` builds it as a ZeroShotModel (audio encoder type ``conse``).
"""

from __future__ import annotations

import numpy as np

BACKBONES = ("MSD_musicnn", "MTT_musicnn")
CONSE_TOP_T = 10

TAG_WORDS: dict[str, dict[str, str]] = {
    "MSD_musicnn": {
        "rock": "rock", "pop": "pop", "alternative": "alternative", "indie": "indie", "electronic": "electronic",
        "female vocalists": "female vocals", "dance": "dance", "00s": "2000s", "alternative rock": "alternative rock",
        "jazz": "jazz", "beautiful": "beautiful", "metal": "metal", "chillout": "chillout",
        "male vocalists": "male vocals", "classic rock": "classic rock", "soul": "soul", "indie rock": "indie rock",
        "Mellow": "mellow", "electronica": "electronica", "80s": "80s", "folk": "folk", "90s": "90s",
        "chill": "chillout", "instrumental": "instrumental", "punk": "punk", "oldies": "oldies", "blues": "blues",
        "hard rock": "hard rock", "ambient": "ambient", "acoustic": "acoustic", "experimental": "experimental",
        "female vocalist": "female vocals", "guitar": "guitar", "Hip-Hop": "hip-hop", "70s": "70s", "party": "party",
        "country": "country", "easy listening": "easy listening", "sexy": "sexy", "catchy": "catchy", "funk": "funk",
        "electro": "electro", "heavy metal": "heavy metal", "Progressive rock": "progressive rock", "60s": "60s",
        "rnb": "r&b", "indie pop": "indie pop", "sad": "sad", "House": "house", "happy": "happy",
    },
    "MTT_musicnn": {
        "guitar": "guitar", "classical": "classical", "slow": "slow", "techno": "techno", "strings": "strings",
        "drums": "drums", "electronic": "electronic", "rock": "rock", "fast": "fast", "piano": "piano",
        "ambient": "ambient", "beat": "beats", "violin": "violin", "vocal": "vocals", "synth": "synth",
        "female": "female vocals", "indian": "indian", "opera": "opera", "male": "male vocals", "singing": "vocals",
        "vocals": "vocals", "no vocals": "instrumental", "harpsichord": "harpsichord", "loud": "loud",
        "quiet": "quiet", "flute": "flute", "woman": "female vocals", "male vocal": "male vocals",
        "no vocal": "instrumental", "pop": "pop", "soft": "soft", "sitar": "sitar", "solo": "solo",
        "man": "male vocals", "classic": "classical", "choir": "choir", "voice": "vocals", "new age": "new age",
        "dance": "dance", "male voice": "male vocals", "female vocal": "female vocals", "beats": "beats",
        "harp": "harp", "cello": "cello", "no voice": "instrumental", "weird": "weird", "country": "country",
        "metal": "metal", "female voice": "female vocals", "choral": "choir",
    },
}


def tag_words(backbone: str, tags: list[str]) -> list[str]:
    """The label word of each of a backbone's tags, in output order (KeyError for an unmapped tag)."""
    mapping = TAG_WORDS[backbone]
    missing = [t for t in tags if t not in mapping]
    if missing:
        raise KeyError(f"{backbone}: no label word for tag(s) {', '.join(missing)}")
    return [mapping[t] for t in tags]


def teacher_words(backbones=BACKBONES) -> list[str]:
    """Every label word the backbones' tags map to, sorted."""
    return sorted({w for b in backbones for w in TAG_WORDS[b].values()})


def word_probabilities(taggrams: dict[str, np.ndarray], tags: dict[str, list[str]], words: list[str]) -> np.ndarray:
    """[N, len(words)] teacher probability of each word (NaN where no backbone has the word).

    taggrams: backbone → [N, 50] tag probabilities; tags: backbone → its 50 tag names.
    """
    n = len(next(iter(taggrams.values())))
    total = np.zeros((n, len(words)))
    count = np.zeros(len(words))
    column = {w: i for i, w in enumerate(words)}
    for name, probs in taggrams.items():
        best = np.full((n, len(words)), -np.inf)
        for j, word in enumerate(tag_words(name, tags[name])):
            if word in column:
                best[:, column[word]] = np.maximum(best[:, column[word]], probs[:, j])
        have = np.isfinite(best[0]) if n else np.zeros(len(words), bool)
        total[:, have] += best[:, have]
        count[have] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def conse_scores(taggram: np.ndarray, tag_vectors: np.ndarray, label_vectors: np.ndarray, top_t: int,
                 keep: np.ndarray | None = None) -> np.ndarray:
    """ConSE in numpy: [N, n_tags] probabilities → [N, M] cosine scores. keep: bool [n_tags], the tags
    allowed to vote (the others are dropped, e.g. tags whose word is a held-out label)."""
    probs = np.asarray(taggram, dtype=np.float64).copy()
    if keep is not None:
        probs[:, ~keep] = -np.inf
    t = min(top_t, int(np.isfinite(probs[0]).sum()) if len(probs) else top_t)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :t]
    weights = np.take_along_axis(probs, top, axis=1)
    weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-8)
    emb = np.einsum("nt,ntd->nd", weights, tag_vectors[top])
    a = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    b = label_vectors / np.maximum(np.linalg.norm(label_vectors, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def conse_model(words, backbones=BACKBONES, top_t: int = CONSE_TOP_T, name: str = "conse"):
    """The ConSE baseline as a ZeroShotModel (nothing trained: tag word vectors are its only weights)."""
    import torch

    from zstag.audio import MUSICNN
    from zstag.backbones.musicnn import musicnn_tags
    from zstag.model import ZeroShotModel

    tags = [w for b in backbones for w in tag_words(b, musicnn_tags(b))]
    config = {
        "name": name,
        "front_end": MUSICNN.to_dict(),
        "embed_dim": words.dim,
        "word_dim": words.dim,
        "words": words.source,
        "audio_encoder": {"type": "conse", "backbones": list(backbones), "feature_dim": 50 * len(backbones),
                          "top_t": int(top_t), "tag_words": tags},
        "label_projection": {"type": "identity"},
        "train_labels": [],
    }
    model = ZeroShotModel(config)
    with torch.no_grad():
        model.audio_projection.tag_vectors.copy_(torch.from_numpy(words.vectors(tags)))
    return model.eval()
