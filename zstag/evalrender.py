"""`zstag eval`'s report (evaluate.evaluate) as rich tables on a console, readable at any width, and its
confusion matrix as a PNG (plot_confusion, --plot).

Numbers are never cut ("0.…"): their columns do not wrap, and the text columns (labels, nearest training
labels) fold instead. The summary has one row per figure and one column per label set (a column per figure
would make 13 columns); the confusion matrix is printed in blocks of predicted columns
that fit; a table still wider than the console is laid out at the width it needs (the terminal wraps its
lines) rather than cut.
"""

from __future__ import annotations

import os

CLASSIFICATION_ROWS = (("accuracy", "accuracy"), ("mean recall", "mean_recall"))
TEXT_MIN_WIDTH = 16  # a text column is not made narrower than its longest word up to this; longer words fold
UNLIMITED = 1 << 16  # a width to measure a table at: Measurement.get clamps to the width it is given
TAGGING_ROWS = (  # (row name, section of a set's figures, key)
    ("retrieval ROC-AUC", "retrieval", "roc_auc"), ("retrieval PR-AUC", "retrieval", "pr_auc"),
    ("annotation ROC-AUC", "annotation", "roc_auc"), ("annotation AP", "annotation", "average_precision"),
    *((k, "top_k", k) for k in ("hit@1", "hit@5", "hit@10", "P@1", "P@5", "P@10")),
)


def fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(report: dict, console) -> None:
    """The figures per label set, per label, the confusion matrix (single-label corpora), the transfer report."""
    model, corpus, tracks = report["model"], report["corpus"], report["tracks"]
    console.print(
        f"model [bold]{model['id']}[/] ({model['name'] or 'unnamed'}, {len(model['train_labels'])} training labels"
        + (", bfloat16 products" if model.get("bf16") else "") + ") "
        f"on {corpus['kind']} corpus [bold]{corpus['name']}[/]: {tracks['evaluated']} of {tracks['selected']} tracks"
        + (f", {len(tracks['failed'])} failed" if tracks["failed"] else "")
    )
    split = report["split"]
    if split:
        groups = ", ".join(f"{g} {n}" for g, n in split["groups"].items())
        match = {True: "the model's split", False: "NOT the model's split", None: "model split unknown"}
        console.print(f"split {split['path']} ({split['sha256'][:12]}, {match[split['matches_model']]}): "
                      f"test partition, groups {groups}")
    else:
        console.print("seen = labels in the model's training vocabulary; all corpus tracks evaluated")
    if report["labels"]["without_vector"]:
        console.print(f"left out (no word vector): {', '.join(report['labels']['without_vector'])}")

    single = report["task"] == "classification"
    _summary(report, console, single)
    _per_label(report, console, single)
    if single and report["metrics"]["all"]["n_tracks"]:
        _confusion(report["metrics"]["all"]["confusion"], console)
    _transfer(report, console)


def _summary(report: dict, console, single: bool) -> None:
    figures = report["metrics"]
    table = _table(f"{report['task']}: seen / unseen / all labels", ["figure"], list(figures))
    table.add_row("labels", *(str(f["n_labels"]) for f in figures.values()))
    table.add_row("tracks", *(str(f["n_tracks"]) for f in figures.values()))
    if single:
        for name, key in CLASSIFICATION_ROWS:
            table.add_row(name, *(fmt(f[key]) for f in figures.values()))
    else:
        for name, section, key in TAGGING_ROWS:
            table.add_row(name, *(fmt(f[section].get(key)) for f in figures.values()))
    print_table(console, table)
    if single:
        return
    for name, f in figures.items():
        r, a = f["retrieval"], f["annotation"]
        if r["skipped_no_positive"] or r["skipped_all_positive"] or a["skipped_no_positive"] or a["skipped_all_positive"]:
            console.print(f"  {name}: {r['skipped_no_positive']} labels without a positive track and "
                          f"{r['skipped_all_positive']} with only positives skipped; "
                          f"{a['skipped_no_positive']} tracks without a true label skipped")


def _per_label(report: dict, console, single: bool) -> None:
    figures, labels = report["metrics"], report["labels"]
    nearest, seen = report["transfer"]["label_overlap"]["nearest"], set(labels["seen"])
    numbers = ["seen", "tracks"] + (["recall in set", "recall in all"] if single else ["ROC-AUC", "PR-AUC"])
    table = _table("per label" + (": recall among its set's labels (seen or unseen) and among all" if single
                                  else ": retrieval"), ["label"], numbers, ["nearest training label (word cosine)"])
    for label, f in figures["all"]["per_label"].items():
        near = nearest.get(label)
        near_text = f"{near['train_label']} {near['cosine']:.2f}" if near else "—"
        if label in labels.get("scored_as", {}):  # e.g. "no vocals" scores as minus "vocals"
            near_text += f"; scored as {labels['scored_as'][label]}"
        own = figures["seen" if label in seen else "unseen"]["per_label"][label]
        if single:
            values = [str(f["n_tracks"]), fmt(own["recall"]), fmt(f["recall"])]
        else:
            values = [str(f["n_positive"]), fmt(f["roc_auc"]), fmt(f["pr_auc"])]
        table.add_row(label, "yes" if label in seen else "no", *values, near_text)
    print_table(console, table)


def _confusion(confusion: dict, console) -> None:
    """Rows: true labels; columns: predicted ones by number, in blocks that fit the console's width."""
    names, matrix = confusion["labels"], confusion["matrix"]
    cells = [[str(n) if n else "." for n in row] for row in matrix]
    heads = [f"{j} {label}" for j, label in enumerate(names)]
    cell = max(len(str(len(names) - 1)), *(len(c) for row in cells for c in row)) + 3  # padding and a border
    corner = "true \\ predicted"
    fixed = min(max(len(corner), *(len(h) for h in heads)), console.width // 3) + 4  # the row names (folded if longer)
    fits = max(1, (console.width - fixed) // cell)
    per_block = -(-len(names) // -(-len(names) // fits))  # blocks of even size: 23 columns as 8, 8, 7, not 11, 11, 1
    for first in range(0, len(names), per_block):
        columns = range(first, min(first + per_block, len(names)))
        part = "" if len(columns) == len(names) else f", predicted {columns[0]}-{columns[-1]}"
        table = _table(f"confusion matrix (all labels){part}", [corner], [str(j) for j in columns])
        for head, row in zip(heads, cells):
            table.add_row(head, *(row[j] for j in columns))
        print_table(console, table)


def _transfer(report: dict, console) -> None:
    overlap = report["transfer"]["label_overlap"]
    console.print(f"label overlap: {overlap['n_exact']} of {overlap['n_eval_labels']} evaluation labels are in the "
                  f"model's training vocabulary ({overlap['n_train_labels']} labels)")
    acoustics = report["transfer"]["acoustics"]
    side = _table(f"acoustic conditions: median [IQR]: training corpus {acoustics['train_corpus'] or '—'} "
                  f"vs {acoustics['eval_corpus']}", ["statistic"], [], ["training corpus", "evaluation corpus"])
    for field, pair in acoustics["fields"].items():
        side.add_row(field, _distribution(pair["train"]), _distribution(pair["eval"]))
    print_table(console, side)
    console.print(f"cosine of the two corpora's mean track embeddings: {fmt(acoustics['mean_embedding_cosine'])}")
    if acoustics["note"]:
        console.print(f"note: {acoustics['note']}")


def _table(title: str, text: list[str], numbers: list[str], more_text: tuple | list = ()):
    """A table whose text columns fold (never "…") and whose number columns never wrap or shrink."""
    from rich.table import Table

    table = Table(title=title)
    for name in text:
        table.add_column(name, overflow="fold")
    for name in numbers:
        table.add_column(name, justify="right", no_wrap=True)
    for name in more_text:
        table.add_column(name, justify="right" if name.endswith("corpus") else "left", overflow="fold")
    return table


def print_table(console, table) -> None:
    """console.print(table), laid out at the width the table needs when the console is narrower than that."""
    from rich.measure import Measurement
    from rich.segment import Segments

    for column in table.columns:  # folding columns: keep whole words up to TEXT_MIN_WIDTH (rich's minimum is 1)
        if not column.no_wrap:
            words = [w for text in (column.header, *column.cells) if isinstance(text, str) for w in text.split()]
            column.min_width = min(max(map(len, words), default=1), TEXT_MIN_WIDTH)
    need = Measurement.get(console, console.options.update_width(UNLIMITED), table).minimum
    if need <= console.width:
        console.print(table)
    else:
        console.print(Segments(console.render(table, console.options.update_width(need))), crop=False)


def _distribution(summary: dict | None) -> str:
    if not summary or summary.get("median") is None:
        return "—"
    return f"{_num(summary['median'])} [{_num(summary['q25'])}, {_num(summary['q75'])}]"


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def plot_confusion(report: dict, path: str | os.PathLike, label_set: str = "all") -> None:
    """The confusion matrix of a single-label report as a PNG (rows: true, colour: row share), atomically."""
    import matplotlib
    import numpy as np

    from zstag.paths import atomic_write

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    confusion = report["metrics"][label_set]["confusion"]
    names, counts = confusion["labels"], np.asarray(confusion["matrix"], dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.0 + 0.45 * len(names)
    fig = Figure(figsize=(size + 1.5, size))  # no pyplot: no global state, no GUI backend
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                        color="white" if shares[i, j] > 0.5 else "black", fontsize=8)
    accuracy = report["metrics"][label_set]["accuracy"]
    ax.set_title(f"{report['corpus']['name']} ({label_set} labels), accuracy {fmt(accuracy)}")
    fig.colorbar(image, ax=ax, label="share of the true label's tracks")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue(), follow_links=True)
