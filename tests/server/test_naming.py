"""Node naming from the data: tokenizer, c-TF-IDF, thresholds, bad input, KuaiRec captions."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

import server.naming as naming
from common.errors import ConfigError
from common.hierarchy import Hierarchy
from common.projection import normalize_rows
from common.vocabulary import LabelSpace, Vocabulary
from server.hierarchy_builder import CutCriterion, TreeConfig, build_hierarchy
from server.naming import (
    WORD_SEPARATOR,
    CatalogueTexts,
    CjkSegmenter,
    NamingConfig,
    class_tfidf,
    item_weights,
    name_nodes,
    tokenize,
)

KUAIREC = Path("/work/shared/data/kuairec-catalogue/kuairec_caption_category.csv")


def test_public_names_exist() -> None:
    """Every name in ``__all__`` is importable."""
    for name in naming.__all__:
        assert hasattr(naming, name), name


def test_tokenize_mixed_scripts_with_bigrams() -> None:
    """Latin/Cyrillic lowercased minus stopwords and numbers; CJK bigrams; short hashtags whole."""
    text = (
        "The BEST #美食 cake recipes 2024 a 我们 蛋糕烘焙 Привет мир 안녕 @bob(O123) https://x.y/z"
    )
    assert tokenize(text, CjkSegmenter.BIGRAM) == (
        "best",
        "美食",
        "cake",
        "recipes",
        "蛋糕",
        "糕烘",
        "烘焙",
        "привет",
        "мир",
        "안녕",
    )


def test_tokenize_long_hashtag_is_segmented() -> None:
    """A hashtag longer than 6 characters is text, not one term; 1-character runs vanish."""
    toks = tokenize("#感谢快手我要上热门 好", "bigram")
    assert "感谢快手我要上热门" not in toks
    assert "热门" in toks and "好" not in toks


def test_tokenize_jieba_gives_words() -> None:
    """With jieba, a Chinese sentence becomes dictionary words, not bigrams."""
    pytest.importorskip("jieba")
    toks = tokenize("我今天学会了做巧克力蛋糕", CjkSegmenter.JIEBA)
    assert "蛋糕" in toks or "巧克力蛋糕" in toks
    assert "力蛋" not in toks


def test_tokenize_rejects_bad_input() -> None:
    """A non-string text or an unknown segmenter is a ConfigError naming the field."""
    with pytest.raises(ConfigError, match="`text`"):
        tokenize(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`cjk_segmenter`"):
        tokenize("x", "trigram")


def test_class_tfidf_matches_hand_computation() -> None:
    """c-TF-IDF = L1-normalised class tf x log(1 + A / f_t), computed by hand."""
    counts = [[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]
    a = (3 + 4) / 2
    f = [2, 3, 2]
    want = [
        [2 / 3 * math.log(1 + a / f[0]), 0.0, 1 / 3 * math.log(1 + a / f[2])],
        [0.0, 3 / 4 * math.log(1 + a / f[1]), 1 / 4 * math.log(1 + a / f[2])],
    ]
    np.testing.assert_allclose(class_tfidf(counts), want, rtol=1e-12)


def test_class_tfidf_unused_term_and_bad_counts() -> None:
    """A term no class uses scores 0; negative counts are rejected."""
    out = class_tfidf([[1.0, 0.0], [2.0, 0.0]])
    assert out[:, 1].tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="`counts`"):
        class_tfidf([[1.0, -1.0]])


def test_item_weights_clip_floor_and_missing() -> None:
    """Negative DP counts clip to 0, a floor of 0.1 x mean is added, missing ids count 0."""
    w = item_weights(["a", "b", "c"], {"a": 10.0, "b": -4.0}, floor=0.1)
    mean = 10 / 3
    np.testing.assert_allclose(w, [10 + 0.1 * mean, 0.1 * mean, 0.1 * mean])
    np.testing.assert_allclose(item_weights(["a", "b"], None), [1.0, 1.0])
    np.testing.assert_allclose(item_weights(["a"], [0.0]), [0.1])
    with pytest.raises(ConfigError, match="`popularity`"):
        item_weights(["a", "b"], [1.0])
    with pytest.raises(ConfigError, match="`popularity`"):
        item_weights(["a"], [float("nan")])


def _space() -> LabelSpace:
    voc = Vocabulary.from_paths([("Food", "Baking"), ("Sports", "Soccer")])
    vecs = {
        "Food": [1.0, 0.0, 0.0, 0.0],
        "Food > Baking": [1.0, 0.0, 0.0, 0.0],
        "Sports": [0.0, 1.0, 0.0, 0.0],
        "Sports > Soccer": [0.0, 1.0, 0.0, 0.0],
    }
    return LabelSpace(voc, np.asarray([vecs[lab.full] for lab in voc.labels], dtype=np.float32))


def _toy() -> tuple[np.ndarray, CatalogueTexts]:
    """Leaf 0 near "Baking", leaf 1 far from every label (axis 2), leaf 2 (axis 3) no items."""
    c = normalize_rows(
        np.asarray(
            [[0.95, 0.0, 0.3, 0.0], [0.0, 0.0, 1.0, 0.1], [0.0, 0.2, 0.0, 1.0]], dtype=np.float32
        )
    )
    texts = (
        "Chocolate cake from the oven",
        "Sourdough bread and cake",
        "Vintage motorcycle engine rebuild",
        "Motorcycle helmet review",
        "Motorcycle touring engine tips",
    )
    v = normalize_rows(
        np.asarray(
            [
                [1.0, 0.0, 0.1, 0.0],
                [1.0, 0.0, 0.2, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.1, 0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0, -0.05],
            ],
            dtype=np.float32,
        )
    )
    return c, CatalogueTexts(tuple(f"it{i}" for i in range(5)), texts, v)


def test_close_label_used_far_label_gives_data_words_nothing_is_unnamed() -> None:
    """Close label -> its path first; far -> data words; no label and no items -> unnamed."""
    c, items = _toy()
    cfg = NamingConfig(label_threshold=0.5, root_threshold=0.5, cjk_segmenter=CjkSegmenter.BIGRAM)
    out = name_nodes(c, np.ones(3), [[0], [1, 2]], items, None, _space(), cfg)
    assert out.leaf_labels[0][0][0] == "Food > Baking"
    assert out.leaf_labels[0][0][1] == pytest.approx(float(c[0, 0]), abs=1e-6)
    assert "cake" in out.leaf_labels[0][-1][0]  # the data words follow the close label
    name1 = out.leaf_labels[1][0][0]
    assert WORD_SEPARATOR in name1 and " > " not in name1
    assert name1.split(WORD_SEPARATOR)[0] in {"motorcycle", "engine"}
    assert all(" > " not in n for n, _ in out.leaf_labels[1])  # no unrelated label
    assert out.leaf_labels[2] == ()
    assert out.leaf_items[2] == ()
    assert out.leaf_items[1][0].item_id == "it2"
    # groups: group 0 is leaf 0 (close to root "Food"), group 1 is far from both roots
    assert out.group_labels[0][0][0] == "Food"
    assert " > " not in out.group_labels[1][0][0] and WORD_SEPARATOR in out.group_labels[1][0][0]


def test_no_catalogue_and_far_labels_leave_everything_unnamed() -> None:
    """Without items, a leaf far from every label has no name at all."""
    c, _ = _toy()
    out = name_nodes(c[1:], np.ones(2), [], None, None, _space(), NamingConfig(label_threshold=0.5))
    assert out.leaf_labels == ((), ())
    assert out.group_labels == ()


def test_default_threshold_follows_the_encoder() -> None:
    """The measured per-encoder threshold applies; an unknown encoder gets the strict one."""
    c = normalize_rows(np.asarray([[1.0, 0.0, 1.7, 0.0]], dtype=np.float32))  # cos ~0.51
    base = _space()
    for enc, named in (("all-MiniLM-L6-v2:abc", True), ("mystery:1", False)):
        space = LabelSpace(base.vocabulary, base.vectors, encoder_id=enc)
        out = name_nodes(c, np.ones(1), [], None, None, space)
        assert bool(out.leaf_labels[0]) is named
    c2 = normalize_rows(np.asarray([[1.0, 0.0, 2.5, 0.0]], dtype=np.float32))  # cos ~0.37
    space = LabelSpace(base.vocabulary, base.vectors, encoder_id="all-MiniLM-L6-v2:abc")
    assert name_nodes(c2, np.ones(1), [], None, None, space).leaf_labels == ((),)


def test_popularity_moves_the_representatives() -> None:
    """A popular item becomes the leaf's first representative; negative counts clip."""
    c, items = _toy()
    cfg = NamingConfig(label_threshold=0.99)
    plain = name_nodes(c, np.ones(3), [], items, None, None, cfg)
    assert plain.leaf_items[1][0].item_id == "it2"
    pop = {"it4": 100.0, "it2": -50.0}
    out = name_nodes(c, np.ones(3), [], items, pop, None, cfg)
    assert out.leaf_items[1][0].item_id == "it4"
    assert out.leaf_words[1][0][0] in {"motorcycle", "touring", "engine", "tips"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"leaf_centroids": np.zeros((0, 4))}, "leaf_centroids"),
        ({"leaf_centroids": np.full((3, 4), np.nan)}, "leaf_centroids"),
        ({"leaf_centroids": np.zeros((3, 4))}, "leaf_centroids"),
        ({"leaf_masses": np.ones(2)}, "leaf_masses"),
        ({"leaf_masses": -np.ones(3)}, "leaf_masses"),
        ({"groups": [[0], [0]]}, r"groups\[1\]"),
        ({"groups": [[5]]}, r"groups\[0\]"),
        ({"groups": [[]]}, r"groups\[0\]"),
        ({"items": "catalogue"}, "items"),
        ({"config": "fast"}, "config"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    """Bad arguments raise ConfigError naming the argument."""
    c, items = _toy()
    args: dict[str, object] = {
        "leaf_centroids": c,
        "leaf_masses": np.ones(3),
        "groups": [[0]],
        "items": items,
        "popularity": None,
        "labels": None,
        "config": None,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        name_nodes(**args)  # type: ignore[arg-type]


def test_bad_catalogue_and_config() -> None:
    """CatalogueTexts and NamingConfig validate their fields; dimensions must agree."""
    v = np.eye(2, dtype=np.float32)
    with pytest.raises(ConfigError, match="`texts`"):
        CatalogueTexts(("a", "b"), ("x",), v)
    with pytest.raises(ConfigError, match="`ids`"):
        CatalogueTexts(("a", "a"), ("x", "y"), v)
    with pytest.raises(ConfigError, match="`vectors`"):
        CatalogueTexts(("a", "b"), ("x", "y"), np.ones((2, 2, 1), dtype=np.float32))
    with pytest.raises(ConfigError, match="`num_words`"):
        NamingConfig(num_words=0)
    with pytest.raises(ConfigError, match="`label_threshold`"):
        NamingConfig(label_threshold=1.5)
    with pytest.raises(ConfigError, match="`popularity_floor`"):
        NamingConfig(popularity_floor=0.0)
    with pytest.raises(ConfigError, match="`cjk_segmenter`"):
        NamingConfig(cjk_segmenter="trigram")  # type: ignore[arg-type]
    c, _ = _toy()
    items = CatalogueTexts(("a", "b"), ("x", "y"), v)
    with pytest.raises(ConfigError, match=r"items\.vectors"):
        name_nodes(c, np.ones(3), [], items)
    with pytest.raises(ConfigError, match="`labels`"):
        space = _space()
        space3 = LabelSpace(space.vocabulary, space.vectors[:, :3])
        name_nodes(c, np.ones(3), [], None, None, space3)


def test_ten_thousand_items_two_hundred_leaves_is_fast() -> None:
    """10k items x 200 leaves: well under a second once the texts are tokenized."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, 6)) for _ in range(3000)]
    texts = tuple(" ".join(rng.choice(words, 8)) for _ in range(10_000))
    items = CatalogueTexts(
        tuple(f"i{i}" for i in range(10_000)), texts, rng.normal(size=(10_000, 32)).astype("f4")
    )
    c = normalize_rows(rng.normal(size=(200, 32)).astype(np.float32))
    groups = [list(range(i, i + 10)) for i in range(0, 200, 10)]
    cfg = NamingConfig(cjk_segmenter=CjkSegmenter.BIGRAM)
    name_nodes(c, np.ones(200), groups, items, None, None, cfg)  # warms the token cache
    t = time.perf_counter()
    out = name_nodes(c, np.ones(200), groups, items, rng.normal(size=10_000), None, cfg)
    assert time.perf_counter() - t < 2.0  # ~0.3 s measured; slack for a loaded machine
    assert all(out.leaf_words) and all(out.group_words)


def _kuairec_captions(limit: int) -> list[tuple[str, str]]:
    from simulations.datasets.catalogue import load_catalogue

    items = load_catalogue(KUAIREC).items[:limit]
    return [(it.text, it.leaf.split(" > ")[0]) for it in items]


@pytest.mark.skipif(not KUAIREC.is_file(), reason="KuaiRec catalogue not present")
@pytest.mark.parametrize("segmenter", [CjkSegmenter.BIGRAM, CjkSegmenter.AUTO])
def test_kuairec_leaf_names_are_chinese_words_from_the_captions(segmenter: CjkSegmenter) -> None:
    """KuaiRec captions: each leaf is named by Chinese words occurring in its own captions."""
    rows = _kuairec_captions(3000)
    cats = sorted({c for _, c in rows})
    rng = np.random.default_rng(0)
    # one public direction per first-level category (no encoder: the test is about words)
    axis = normalize_rows(rng.normal(size=(len(cats), 24)).astype(np.float32))
    v = normalize_rows(
        np.stack([axis[cats.index(c)] for _, c in rows]) + 0.05 * rng.normal(size=(len(rows), 24))
    ).astype(np.float32)
    items = CatalogueTexts(tuple(str(i) for i in range(len(rows))), tuple(t for t, _ in rows), v)
    out = name_nodes(
        axis, np.ones(len(cats)), [], items, None, None, NamingConfig(cjk_segmenter=segmenter)
    )
    leaf_of = np.argmax(v @ axis.T, axis=1)
    named = 0
    for j, labels in enumerate(out.leaf_labels):
        if not labels:
            continue
        named += 1
        blob = "\n".join(rows[i][0].lower() for i in np.flatnonzero(leaf_of == j))
        for word in labels[0][0].split(WORD_SEPARATOR):
            assert word in blob, (cats[j], word)
        assert re.search(r"[\u4e00-\u9fff]", labels[0][0]), labels
    assert named == len(cats)


def _films() -> tuple[LabelSpace, list[str], np.ndarray, np.ndarray, CatalogueTexts]:
    """A films-heavy toy like MovieLens: two "Thrillers" leaves told apart only by their items,
    three leaf groups all under the root "Movies", one leaf under "Books"."""
    d = 10
    e = np.eye(d, dtype=np.float32)
    vocab = Vocabulary.from_paths(
        [
            ("Movies", "Thrillers"),
            ("Movies", "Horror Films"),
            ("Movies", "Comedy Films"),
            ("Movies", "Romantic Comedies"),
            ("Books", "Poetry"),
        ]
    )
    where = {
        "Movies": e[0],
        "Movies > Thrillers": e[0] + e[1],
        "Movies > Horror Films": e[0] + e[1] + 1.2 * e[2],
        "Movies > Comedy Films": e[0] + e[3],
        "Movies > Romantic Comedies": e[0] + e[3] + 1.2 * e[4],
        "Books": e[8],
        "Books > Poetry": e[8] + e[9],
    }
    space = LabelSpace(vocab, normalize_rows(np.stack([where[lab.full] for lab in vocab.labels])))
    leaves = normalize_rows(
        np.stack(
            [
                e[0] + e[1] + 0.35 * e[5],  # thrillers about halloween and the police
                e[0] + e[1] + 0.35 * e[6],  # thrillers about doctors and escapes
                e[0] + e[1] + 1.2 * e[2],  # horror
                e[0] + e[3],  # comedy
                e[0] + e[3] + 1.2 * e[4],  # romantic comedy
                e[8] + e[9],  # poetry
            ]
        )
    )
    ids = [f"leaf-{i:04d}" for i in range(len(leaves))]
    texts = {
        0: ["Halloween night police chase", "Police detective on Halloween", "Halloween killer"],
        1: ["Doctor escape from the hospital", "The escape clause doctor", "Doctor on the run"],
        2: ["Ghost house haunting", "Haunted ghost story", "Zombie ghost night"],
        3: ["Slapstick office party", "Office pranks party", "Slapstick road trip"],
        4: ["Wedding bride love", "Love at the wedding", "Bride and groom love story"],
        5: ["Sonnets of the sea", "Collected sonnets verse", "Verse for winter"],
    }
    rng = np.random.default_rng(0)
    rows = [(t, j) for j, ts in texts.items() for t in ts]
    v = normalize_rows(
        np.stack([leaves[j] for _, j in rows]) + 0.02 * rng.normal(size=(len(rows), d))
    ).astype(np.float32)
    items = CatalogueTexts(tuple(f"m{i}" for i in range(len(rows))), tuple(t for t, _ in rows), v)
    masses = np.asarray([5.0, 1.0, 2.0, 4.0, 3.0, 1.0])
    return space, ids, leaves, masses, items


def _film_tree(
    items: CatalogueTexts | None, popularity: dict[str, float] | None = None
) -> Hierarchy:
    space, ids, leaves, masses, _ = _films()
    # four broad interests, two of them close to the root "Movies" (the other film group is
    # too far from it and is named by words)
    cfg = TreeConfig(criterion=CutCriterion.FIXED, level1_k=4, label_weight=0.0)
    return build_hierarchy(
        ids,
        leaves,
        masses,
        version=1,
        server_round=1,
        projection_fingerprint="f",
        labels=space,
        config=cfg,
        items=items,
        popularity=popularity,
    )


def test_built_tree_names_are_distinct_and_informative() -> None:
    """Through the real tree builder: leaves sharing "Thrillers" get their own items' words,
    broad interests sharing the root "Movies" get their children's names; unique names stay."""
    items = _films()[4]
    h = Hierarchy.from_json(_film_tree(items).to_json())  # what hierarchy.json stores
    groups, leaves = h.level(1), h.level(2)
    assert len({g.label for g in groups}) == len(groups)
    assert len({n.label for n in leaves}) == len(leaves)
    thr = {n.node_id: n for n in leaves if n.label.startswith("Thrillers")}
    assert set(thr) == {"leaf-0000", "leaf-0001"}
    words0 = set(thr["leaf-0000"].label.split(WORD_SEPARATOR)[1:])
    words1 = set(thr["leaf-0001"].label.split(WORD_SEPARATOR)[1:])
    assert len(words0) >= 2 and words0 <= {"halloween", "police", "detective", "killer", "chase"}
    assert len(words1) >= 2 and words1 <= {"doctor", "escape", "hospital", "clause", "run"}
    for n in thr.values():  # the vocabulary path stays the prefix, the score is unchanged
        assert n.labels[0][0].startswith("Movies > Thrillers" + WORD_SEPARATOR)
        assert n.labels[0][1] > 0.9
    assert h.nodes["leaf-0003"].labels[0][0] == "Movies > Comedy Films"  # unique: untouched
    movies = [g for g in groups if g.labels and g.labels[0][0].startswith("Movies")]
    assert len(movies) >= 2
    for g in movies:
        head, _, rest = g.label.partition(": ")
        assert head == "Movies" and rest, g.label
        kids = {
            h.nodes[c].labels[0][0].split(" > ")[-1].split(WORD_SEPARATOR)[0] for c in g.children
        }
        first = rest.split(", ")[0]
        assert first in kids, (g.label, kids)  # the heaviest child's own close label
    books = [g for g in groups if g.label.startswith("Books")]
    assert [g.label for g in books] == ["Books"]
    thriller_group = h.nodes[h.nodes["leaf-0000"].parent]
    assert thriller_group.label == "Movies: Thrillers, Horror Films"
    assert h.path_labels("leaf-0000") == f"{thriller_group.label} > {thr['leaf-0000'].label}"


def test_without_a_catalogue_groups_use_children_and_twin_leaves_a_number() -> None:
    """No items: broad interests sharing "Movies" are told apart by their children's close
    labels; two "Thrillers" leaves whose other close labels are the same too are numbered,
    the heavier keeping the plain name."""
    h = _film_tree(None)
    assert len({n.label for n in h.level(2)}) == len(h.level(2))
    assert sorted(g.label for g in h.level(1) if g.labels) == [
        "Books",
        "Movies: Comedy Films",
        "Movies: Thrillers, Horror Films",
    ]
    assert h.nodes["leaf-0000"].label == "Thrillers"
    assert h.nodes["leaf-0001"].label == "Thrillers (2)"
    assert h.nodes["leaf-0001"].labels[1:] == h.nodes["leaf-0000"].labels[1:]


def test_identical_leaves_are_numbered_by_mass() -> None:
    """Two leaves with the same close label and nothing else to tell them apart: the heavier
    keeps the name, the lighter is numbered."""
    c = normalize_rows(np.asarray([[1.0, 0.0, 0.1, 0.0], [1.0, 0.0, 0.0, 0.1]], dtype=np.float32))
    out = name_nodes(c, [1.0, 3.0], [], None, None, _space(), NamingConfig(label_threshold=0.9))
    assert out.leaf_labels[1][0][0] == "Food > Baking"
    assert out.leaf_labels[0][0][0] == "Food > Baking (2)"
    assert out.leaf_labels[0][0][1] == pytest.approx(float(c[0, 0]), abs=1e-6)


def test_word_named_repeats_use_further_words() -> None:
    """Two leaves whose top word coincides are told apart by their next words."""
    c = normalize_rows(np.eye(3, dtype=np.float32))
    texts = ("river river river river trout", "river river river river salmon", "mountain hike")
    v = normalize_rows(np.asarray([[1, 0, 0.1], [0, 1, 0.1], [0, 0, 1]], dtype=np.float32))
    items = CatalogueTexts(("a", "b", "c"), texts, v)
    out = name_nodes(c, np.ones(3), [], items, None, None, NamingConfig(num_words=1))
    assert out.leaf_words[0] == out.leaf_words[1] and len(out.leaf_words[0]) == 1
    assert out.leaf_words[0][0][0] == "river"
    names = [lab[0][0] for lab in out.leaf_labels]
    assert names == [f"river{WORD_SEPARATOR}trout", f"river{WORD_SEPARATOR}salmon", "hike"]


def test_renaming_with_popularity_equals_building_with_it() -> None:
    """The round renames its tree once the DP popularity is out (:func:`rename_hierarchy`):
    the same nodes, ids, weights and centroids, and the labels a build with that popularity
    gives; a popular item's words lead a leaf's data words."""
    from server.hierarchy_builder import rename_hierarchy

    space, *_, items = _films()
    cfg = TreeConfig(criterion=CutCriterion.FIXED, level1_k=4, label_weight=0.0)
    plain = _film_tree(items)
    # every item of the sonnets leaf but one is unpopular: its words lead
    popularity = {i: 1.0 for i in items.ids}
    popularity.update(
        {i: 0.0 for i, t in zip(items.ids, items.texts, strict=True) if "onnets" in t}
    )
    popularity[items.ids[items.texts.index("Verse for winter")]] = 500.0
    renamed = rename_hierarchy(plain, items, popularity, space, cfg)
    built = _film_tree(items, popularity)
    assert set(renamed.nodes) == set(plain.nodes) == set(built.nodes)
    for nid, node in renamed.nodes.items():
        assert node.weight == plain.nodes[nid].weight
        assert node.children == plain.nodes[nid].children
        np.testing.assert_array_equal(node.centroid, plain.nodes[nid].centroid)
        assert node.labels == built.nodes[nid].labels, nid
    assert renamed.version == plain.version
    # the poetry leaf: its close label stays first, its words follow the popular item
    assert plain.nodes["leaf-0005"].labels[1][0].startswith("sonnets")
    assert renamed.nodes["leaf-0005"].labels[0][0] == "Books > Poetry"
    assert "winter" in renamed.nodes["leaf-0005"].labels[1][0]
