"""Names from the data: the interest tree's nodes named by the public catalogue's words.

A vocabulary label names a node only when it is **close** to it (cosine in the projected
space at least :attr:`NamingConfig.label_threshold`); otherwise the node is named by the
words of the public catalogue items nearest it, by class-based TF-IDF (c-TF-IDF, as
BERTopic's ``ClassTfidfTransformer``, Grootendorst 2022, arXiv:2203.05794, section 3.3):

- each catalogue item is assigned to its nearest leaf centroid (cosine); a leaf's
  "document" is the concatenation of its items, each weighted by its popularity
  (:func:`item_weights`: DP counts clipped at 0, plus a floor so unpopular items still count a
  little; no counts: every item weighs 1);
- ``W[t, c] = tf[t, c] * log(1 + A / f_t)``, with ``tf[t, c]`` the frequency of term ``t`` in
  class ``c`` (L1-normalised per class, as BERTopic), ``A`` the average number of (weighted)
  words per class and ``f_t`` the (weighted) frequency of ``t`` over all classes
  (:func:`class_tfidf`);
- broad interests (groups of leaves) are named the same way, with groups as the classes, or
  by a close vocabulary **root**.

A node with no close label and no item words is unnamed (no labels), never named by an
unrelated label. The catalogue and the popularity counts are public (the counts are DP
releases), so naming costs no privacy.

Label format (:data:`NodeLabels`, what ``common.hierarchy.Node.labels`` holds), best first:

- close vocabulary labels: ``("Food & Drink > Baking", cosine)``, at most ``num_labels``;
- then the data words: ``("蛋糕 · 烘焙 · 甜品", score)``, the top ``num_words`` c-TF-IDF
  terms joined by :data:`WORD_SEPARATOR` (never contains ``" > "``), scored by the sum of
  their c-TF-IDF weights;
- ``()``: unnamed.

Nodes of one level never show the same name (``Node.label``, the best label's last segment):
a repeated name is qualified by the node's own words or its children's close labels
(``"Movies & TV: Thrillers, Crime Dramas"``, :mod:`server.naming_distinct`).

The representative items (highest ``cosine x weight`` among a node's items) and the words
with their weights are returned beside the labels (:class:`NodeNames`).

**Tokenizer** (:func:`tokenize`): Latin, Cyrillic, Greek... words are lowercased, English
stopwords, numbers and 1-character tokens dropped; runs of CJK characters are segmented by
``jieba`` (:class:`CjkSegmenter`; overlapping character bigrams when it is not installed),
with 1-character words and a small list of Chinese function words dropped; Korean Hangul
words stay whole; a short hashtag (``#美食``, 2..6 characters) is kept whole as a topic
word. With bigrams, overlapping bigrams that occur together in a node's items are merged
back when choosing its words (``广场`` + ``场舞`` -> ``广场舞``). Measured on the 9,700 KuaiRec
captions (USE-multilingual leaves, k-means k=136, 3 words each, 408 words): with jieba 87%
of the CJK name words are jieba-dictionary words, 2% whole hashtags, 10% neither
(``仔子``, ``问能``); with bigrams 31% dictionary words, 15% hashtags, 54% neither
(``你急什``, ``快手我要``, ``要上``). jieba costs ~1 s to load its dictionary and ~2.5 s for the
9,700 captions (cached per text afterwards).

**Thresholds** (measured, issue 18): leaves from spherical k-means (k=136, 3 seeds) of the
projected catalogue embeddings (projection 128-d, the default seed); per leaf, the cosine
between its centroid and its nearest depth-2 vocabulary label. "Matching": that label is
the leaf's majority ground-truth category (synthetic catalogue, 30 items x 136 leaves), or
lies under the vocabulary root hand-mapped from the leaf's majority KuaiRec first-level
category (美食 -> Food & Drink, 宠物 -> Pets & Animals, ...; 颜值, 情感, 三农... map to none).
Quantiles 0 / 5 / 10 / 25 / 50 / 75 / 90 / 95 / 100 %::

    all-MiniLM-L6-v2
      synthetic matching     (n=302)  .25 .47 .51 .57 .64 .70 .74 .77 .80
      synthetic non-matching (n=106)  .28 .31 .34 .41 .48 .57 .68 .71 .77  (mostly siblings)
      KuaiRec matching       (n=30)   .25 .26 .27 .31 .36 .44 .47 .48 .49
      KuaiRec non-matching   (n=378)  .18 .21 .22 .25 .28 .33 .38 .40 .50
      -> 0.45: keeps 95% of synthetic matching, 3% of KuaiRec non-matching
    use-multilingual-v3
      synthetic matching     (n=267)  .21 .30 .35 .41 .49 .55 .59 .60 .71
      synthetic non-matching (n=141)  .14 .20 .21 .22 .27 .38 .50 .53 .64
      KuaiRec matching       (n=47)   .15 .18 .19 .23 .28 .39 .49 .58 .62
      KuaiRec non-matching   (n=361)  .09 .13 .15 .19 .23 .28 .34 .36 .55
      -> 0.40: keeps 77% of synthetic matching, 3% of KuaiRec non-matching

Roots against group centroids (weighted Ward of those leaves cut at 12 and 20 groups):
MiniLM, synthetic groups whose nearest root is their majority root 0.40..0.68, other
synthetic groups 0.27..0.53 (mostly groups with no majority root, purity <= 0.4), KuaiRec
groups 0.10..0.30 -> 0.40. USE, synthetic right 0.19..0.54 (most >= 0.27), wrong 0.14..0.41,
KuaiRec 0.08..0.41 (95%: 0.30..0.36) -> 0.35. An encoder not measured gets
:data:`FALLBACK_THRESHOLD` (strict: fewer vocabulary names, more data words).
"""

from __future__ import annotations

import enum
import importlib
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from common.errors import ConfigError
from common.projection import normalize_rows
from common.vocabulary import Label, LabelSpace
from server.naming_distinct import distinct_labels

__all__ = [
    "FALLBACK_THRESHOLD",
    "LABEL_THRESHOLDS",
    "ROOT_THRESHOLDS",
    "WORD_SEPARATOR",
    "CatalogueTexts",
    "CjkSegmenter",
    "NamingConfig",
    "NodeLabels",
    "NodeNames",
    "RepresentativeItem",
    "assign_items",
    "class_tfidf",
    "close_leaf_labels",
    "item_weights",
    "label_threshold",
    "name_nodes",
    "tokenize",
]

#: A node's labels: ``(name, score)`` pairs, best first (``common.hierarchy.Node.labels``).
NodeLabels = tuple[tuple[str, float], ...]

#: Joins a node's data words into one name.
WORD_SEPARATOR: Final[str] = " · "

#: Leaf label thresholds by encoder (a prefix of ``LabelSpace.encoder_id``), measured.
LABEL_THRESHOLDS: Final[Mapping[str, float]] = {"all-MiniLM-L6-v2": 0.45, "use-multilingual": 0.40}
#: Group (root label) thresholds by encoder, measured.
ROOT_THRESHOLDS: Final[Mapping[str, float]] = {"all-MiniLM-L6-v2": 0.40, "use-multilingual": 0.35}
#: For an encoder not measured: above every non-matching cosine seen with either encoder.
FALLBACK_THRESHOLD: Final[float] = 0.55


def _words(s: str) -> frozenset[str]:
    return frozenset(s.split())


_STOP_EN: Final[frozenset[str]] = _words(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing don down during each even ever
    every few for from further get gets got had has have having he her here hers herself him
    himself his how however i if in into is it its itself just let like made make many may me
    might more most much must my myself new no nor not now of off on once one only or other our
    ours ourselves out over own per really same she should since so some still such than that
    the their theirs them themselves then there these they this those through thus to too under
    until up upon us use used using very via was way we well were what when where which while
    who whom whose why will with within without would yet you your yours yourself yourselves
    vs amp http https www com"""
)
# Chinese function words and fillers that survive as bigrams (single characters are dropped).
_STOP_ZH: Final[frozenset[str]] = _words(
    """我们 你们 他们 她们 它们 自己 一个 一下 一些 一点 一样 一直 一起 什么 怎么 这个 那个 这样
    那样 这么 那么 这是 那是 这些 那些 就是 不是 没有 可以 还是 还有 因为 所以 但是 如果 已经 真的
    现在 时候 知道 大家 为了 觉得 出来 起来 不会 不要 不能 只是 只有 只要 而且 然后 这种 哈哈 哈哈哈
    的人 了我 我的 你的 他的 她的 是我 是你 都是 也是 就是 我们的 有点 有人 别人 的时 时候 不了 的话
    了吗 吗吗 啊啊 呢呢 么么 一天 今天 这里 那里 哪里"""
)

_CJK = (
    "\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3038-\u303b\u3040-\u30ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
)
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_MENTION = re.compile(r"@\S+|https?://\S+|www\.\S+")
_HASHTAG = re.compile(r"#([^\s#@]+?)#?(?=[\s#@]|$)")
_WORD = re.compile(rf"[{_CJK}]+|[{_HANGUL}]+|[^\W\d_{_CJK}{_HANGUL}]+(?:['’][^\W\d_]+)?")
_IS_CJK = re.compile(rf"[{_CJK}]")
_PUNCT_SPLIT = re.compile(r"[^\w]+")
_MAX_TAG_CHARS: Final[int] = 6
_MAX_MERGED_CHARS: Final[int] = 4


class CjkSegmenter(str, enum.Enum):
    """How runs of CJK characters become words."""

    AUTO = "auto"
    """``jieba`` when installed, else bigrams."""
    JIEBA = "jieba"
    """``jieba`` 0.42 word segmentation (its default dictionary); an error when not installed."""
    BIGRAM = "bigram"
    """Overlapping character bigrams (dependency-free)."""


@lru_cache(maxsize=1)
def _jieba() -> Any | None:
    try:
        mod = importlib.import_module("jieba")
    except ImportError:
        return None
    mod.setLogLevel(logging.WARNING)
    return mod


def _resolve(segmenter: CjkSegmenter) -> CjkSegmenter:
    if segmenter is CjkSegmenter.BIGRAM:
        return segmenter
    if _jieba() is not None:
        return CjkSegmenter.JIEBA
    if segmenter is CjkSegmenter.JIEBA:
        raise ConfigError(
            "`cjk_segmenter` 'jieba' needs the jieba package (pip install jieba). Found none."
        )
    return CjkSegmenter.BIGRAM


def _bigrams(run: str) -> list[str]:
    return [run[i : i + 2] for i in range(len(run) - 1)]


def _jieba_words(run: str) -> list[str]:
    jb = _jieba()
    if jb is None:  # _resolve chooses jieba only when it is installed
        raise ConfigError("`cjk_segmenter` 'jieba' needs the jieba package. Found none.")
    return [w for w in jb.lcut(run, HMM=True) if len(w) >= 2]


_SEGMENT: Final[dict[CjkSegmenter, Callable[[str], list[str]]]] = {
    CjkSegmenter.BIGRAM: _bigrams,
    CjkSegmenter.JIEBA: _jieba_words,
}


@lru_cache(maxsize=1 << 17)
def _tokenize(text: str, segmenter: CjkSegmenter) -> tuple[str, ...]:
    """``segmenter`` is resolved (never AUTO)."""
    split = _SEGMENT[segmenter]
    s = unicodedata.normalize("NFKC", text).lower()
    s = _MENTION.sub(" ", s)
    out: list[str] = []

    def words(chunk: str) -> None:
        for w in _WORD.findall(chunk):
            if _IS_CJK.match(w):
                if len(w) >= 2:
                    out.extend(b for b in split(w) if b not in _STOP_ZH)
            elif len(w) >= 2 and w not in _STOP_EN:
                out.append(w)

    pos = 0
    for m in _HASHTAG.finditer(s):
        words(s[pos : m.start()])
        pos = m.end()
        tag = m.group(1)
        core = _PUNCT_SPLIT.sub("", tag)
        if 2 <= len(core) <= _MAX_TAG_CHARS and _IS_CJK.search(core):
            if core not in _STOP_ZH:
                out.append(core)
        else:
            words(tag)
    words(s[pos:])
    return tuple(out)


def tokenize(text: str, segmenter: CjkSegmenter | str = CjkSegmenter.AUTO) -> tuple[str, ...]:
    """The terms of one item text, in order (cached per text).

    Latin, Cyrillic... words: lowercased (NFKC), English stopwords, numbers and 1-character
    words dropped. CJK runs: words of ``segmenter`` (``jieba`` words, or overlapping
    character bigrams), minus 1-character words and Chinese function words. Hangul words
    stay whole. A hashtag of 2..6 characters with CJK is one term; ``@mentions`` and URLs
    are dropped.

    Args:
        text: any text.
        segmenter: a :class:`CjkSegmenter` (or its value).

    Raises:
        ConfigError: ``text`` is not a string, or an unknown or unavailable segmenter.
    """
    if not isinstance(text, str):
        raise ConfigError(f"`text` must be a string. Found {type(text).__name__}.")
    return _tokenize(text, _resolve(_segmenter(segmenter)))


def _segmenter(value: CjkSegmenter | str) -> CjkSegmenter:
    try:
        return CjkSegmenter(value)
    except ValueError:
        raise ConfigError(
            f"`cjk_segmenter` must be one of {[m.value for m in CjkSegmenter]}. Found {value!r}."
        ) from None


@dataclass(frozen=True)
class CatalogueTexts:
    """The public catalogue, embedded.

    Attributes:
        ids: item ids, distinct, shape ``(n_items,)``.
        texts: item texts, in id order.
        vectors: unit vectors in the projected space, shape ``(n_items, dim)``.
    """

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    vectors: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(self.ids))
        object.__setattr__(self, "texts", tuple(self.texts))
        v = np.asarray(self.vectors, dtype=np.float32)
        n = len(self.ids)
        if len(self.texts) != n:
            raise ConfigError(f"`texts` must have one text per id ({n}). Found {len(self.texts)}.")
        if len(set(self.ids)) != n:
            raise ConfigError(f"`ids` must be distinct. Found {n - len(set(self.ids))} repeated.")
        bad = next((t for t in self.texts if not isinstance(t, str)), None)
        if bad is not None:
            raise ConfigError(f"`texts` must be strings. Found {type(bad).__name__}.")
        if v.ndim != 2 or v.shape[0] != n or not np.isfinite(v).all():
            raise ConfigError(
                f"`vectors` must be finite with shape ({n}, dim). Found shape {v.shape}."
            )
        object.__setattr__(self, "vectors", normalize_rows(v) if n else v)


@dataclass(frozen=True)
class NamingConfig:
    """How nodes are named.

    Attributes:
        num_words: data words per name.
        num_labels: close vocabulary labels kept per node.
        num_representatives: representative items returned per node.
        label_threshold: minimum cosine between a leaf and a vocabulary label for the label to
            name it (``None``: :data:`LABEL_THRESHOLDS` for the label space's encoder, else
            :data:`FALLBACK_THRESHOLD`).
        root_threshold: the same between a group and a vocabulary root (``None``:
            :data:`ROOT_THRESHOLDS`).
        popularity_floor: an item's weight is ``max(count, 0) + popularity_floor x`` the mean
            clipped count (so an item nobody was counted on still weighs a little).
        extra_stopwords: terms never used as names (e.g. a platform's boilerplate tags).
        cjk_segmenter: how CJK text becomes words (:class:`CjkSegmenter`).
    """

    num_words: int = 3
    num_labels: int = 3
    num_representatives: int = 3
    label_threshold: float | None = None
    root_threshold: float | None = None
    popularity_floor: float = 0.1
    extra_stopwords: frozenset[str] = field(default_factory=frozenset)
    cjk_segmenter: CjkSegmenter = CjkSegmenter.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "cjk_segmenter", _segmenter(self.cjk_segmenter))
        for name in ("num_words", "num_labels", "num_representatives"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100):
                raise ConfigError(f"`{name}` must be an int in [1, 100]. Found {v!r}.")
        for name in ("label_threshold", "root_threshold"):
            v = getattr(self, name)
            if v is not None and not (
                isinstance(v, (int, float)) and not isinstance(v, bool) and -1.0 <= v <= 1.0
            ):
                raise ConfigError(f"`{name}` must be None or a cosine in [-1, 1]. Found {v!r}.")
        f = self.popularity_floor
        if not (isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 < f <= 1e6):
            raise ConfigError(f"`popularity_floor` must be a number in (0, 1e6]. Found {f!r}.")
        object.__setattr__(self, "extra_stopwords", frozenset(self.extra_stopwords))


@dataclass(frozen=True)
class RepresentativeItem:
    """A catalogue item standing for a node: ``score`` is its cosine to the node's centroid
    times its weight."""

    item_id: str
    text: str
    score: float


@dataclass(frozen=True)
class NodeNames:
    """What :func:`name_nodes` returns; one entry per leaf (input order) and per group.

    Attributes:
        leaf_labels / group_labels: the labels (:data:`NodeLabels`), ``()`` when unnamed.
        leaf_items / group_items: representative items, best first.
        leaf_words / group_words: the c-TF-IDF words with their weights, best first.
    """

    leaf_labels: tuple[NodeLabels, ...]
    group_labels: tuple[NodeLabels, ...]
    leaf_items: tuple[tuple[RepresentativeItem, ...], ...]
    group_items: tuple[tuple[RepresentativeItem, ...], ...]
    leaf_words: tuple[NodeLabels, ...]
    group_words: tuple[NodeLabels, ...]


def item_weights(
    ids: Sequence[str],
    popularity: Mapping[str, float] | npt.ArrayLike | None,
    *,
    floor: float = 0.1,
) -> npt.NDArray[np.float64]:
    """Each item's weight: its (DP, maybe noisy) count clipped at 0, plus ``floor`` times the
    mean clipped count (1 when all are 0); all 1 without counts.

    Args:
        ids: item ids, shape ``(n_items,)``.
        popularity: ``id -> count`` (a missing id counts 0), an array of shape ``(n_items,)``
            in id order, or ``None``.
        floor: the floor, relative to the mean count (> 0).

    Raises:
        ConfigError: a count is not finite, or the array has the wrong shape.
    """
    n = len(ids)
    if popularity is None:
        return np.ones(n)
    if isinstance(popularity, Mapping):
        try:
            p = np.asarray([float(popularity.get(i, 0.0)) for i in ids], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"`popularity` values must be numbers: {err}.") from None
    else:
        try:
            p = np.asarray(popularity, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"`popularity` must be numbers: {err}.") from None
        if p.shape != (n,):
            raise ConfigError(f"`popularity` must have shape ({n},). Found {p.shape}.")
    if not np.isfinite(p).all():
        raise ConfigError("`popularity` must be finite. Found NaN or infinity.")
    if not (floor > 0 and np.isfinite(floor)):
        raise ConfigError(f"`floor` must be > 0. Found {floor!r}.")
    clipped = np.maximum(p, 0.0)
    mean = float(clipped.mean()) if n else 0.0
    return clipped + floor * (mean if mean > 0 else 1.0)


def assign_items(
    item_vectors: npt.NDArray[np.floating], centroids: npt.NDArray[np.floating]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Each item's nearest centroid by cosine, and that cosine.

    Args:
        item_vectors: unit rows, shape ``(n_items, dim)``.
        centroids: unit rows, shape ``(n_nodes, dim)``.

    Returns:
        ``(index, cosine)``, both of shape ``(n_items,)``.
    """
    sims = np.asarray(item_vectors, dtype=np.float32) @ np.asarray(centroids, dtype=np.float32).T
    idx = np.argmax(sims, axis=1) if sims.size else np.zeros(len(item_vectors), dtype=np.int64)
    cos = sims[np.arange(len(idx)), idx] if sims.size else np.zeros(len(idx))
    return idx.astype(np.int64), cos.astype(np.float64)


def class_tfidf(counts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """c-TF-IDF of a class x term count matrix (BERTopic's ``ClassTfidfTransformer``).

    ``W[c, t] = tf[c, t] / sum_t tf[c, t] * log(1 + A / f_t)``, ``A`` the mean row sum,
    ``f_t`` the column sum. Counts may be weighted (non-integer).

    Args:
        counts: non-negative, shape ``(n_classes, n_terms)``; a term no class uses gets 0.

    Returns:
        dense float64, shape ``(n_classes, n_terms)``.

    Raises:
        ConfigError: counts not 2-D, negative or not finite.
    """
    x = np.asarray(counts, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all() or (x < 0).any():
        raise ConfigError(
            f"`counts` must be a finite non-negative (n_classes, n_terms) matrix. Found shape {x.shape}."
        )
    return np.asarray(_ctfidf(sp.csr_matrix(x)).toarray(), dtype=np.float64)


#: Words ranked per node past ``num_words``: they only qualify names nodes would share.
_MORE_WORDS: Final[int] = 4
#: A term found in more than this share of the classes (with >= 4 classes) is not used to name
#: any of them: on KuaiRec the platform's boilerplate (快手, 热门, 感谢) otherwise names
#: most broad interests.
_MAX_CLASS_SHARE: Final[float] = 0.5


def _ctfidf(x: sp.csr_matrix) -> sp.csr_matrix:
    rows = np.asarray(x.sum(axis=1)).ravel()
    f = np.asarray(x.sum(axis=0)).ravel()
    avg = float(rows.mean()) if len(rows) else 0.0
    idf = np.zeros_like(f)
    used = f > 0
    idf[used] = np.log1p(avg / f[used])
    tf = sp.diags(1.0 / np.where(rows > 0, rows, 1.0)) @ x
    return sp.csr_matrix(tf @ sp.diags(idf))


def _vocab_matrix(
    texts: Sequence[str], stop: frozenset[str], segmenter: CjkSegmenter
) -> tuple[sp.csr_matrix, list[str]]:
    """Item x term counts of ``texts``."""
    index: dict[str, int] = {}
    indptr = [0]
    indices: list[int] = []
    for t in texts:
        for tok in _tokenize(t, segmenter):
            if tok in stop:
                continue
            indices.append(index.setdefault(tok, len(index)))
        indptr.append(len(indices))
    data = np.ones(len(indices))
    m = sp.csr_matrix(
        (data, np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(texts), len(index)),
    )
    m.sum_duplicates()
    return m, list(index)


def _merge_words(
    ranked: Sequence[tuple[str, float]], texts: Sequence[str], num: int
) -> list[tuple[str, float]]:
    """The first ``num`` words of ``ranked``; a CJK bigram overlapping a chosen word by one
    character extends it when the joined string is the usual form in ``texts`` (at least
    half as frequent as the chosen word, in two texts or more, at most
    :data:`_MAX_MERGED_CHARS` long), and is dropped when the chosen word contains it."""
    norm = [unicodedata.normalize("NFKC", t).lower() for t in texts]
    blob = "\n".join(norm)
    chosen: list[tuple[str, float]] = []
    for w, s in ranked:
        if len(w) == 2 and _IS_CJK.match(w):
            hit = False
            for k, (c, cs) in enumerate(chosen):
                if w in c:
                    hit = True
                elif c[-1] == w[0] or c[0] == w[1]:
                    joined = c + w[1] if c[-1] == w[0] else w[0] + c
                    if (
                        len(joined) <= _MAX_MERGED_CHARS
                        and blob.count(joined) * 2 >= blob.count(c)
                        and sum(joined in t for t in norm) >= 2
                    ):
                        chosen[k] = (joined, max(cs, s))
                        hit = True
                if hit:
                    break
            if hit:
                continue
        if len(chosen) < num:
            chosen.append((w, s))
    return chosen


def _class_words(
    x: sp.csr_matrix,
    vocab: list[str],
    classes: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    n_classes: int,
    texts: Sequence[str],
    num: int,
    merge: bool,
) -> list[NodeLabels]:
    """Top c-TF-IDF words per class; ``classes[i] = -1`` leaves item ``i`` out."""
    keep = classes >= 0
    onehot = sp.csr_matrix(
        (weights[keep], (classes[keep], np.flatnonzero(keep))), shape=(n_classes, x.shape[0])
    )
    counts = sp.csr_matrix(onehot @ x)
    if n_classes >= 4:
        # boilerplate (a platform's "trending", "thanks"): a term in most classes names none
        present = np.asarray((counts > 0).sum(axis=0)).ravel()
        common = np.flatnonzero(present > _MAX_CLASS_SHARE * n_classes)
        if len(common):
            counts = sp.csr_matrix(
                counts
                @ sp.diags(np.isin(np.arange(x.shape[1]), common, invert=True).astype(np.float64))
            )
            counts.eliminate_zeros()
    w = _ctfidf(counts)
    members: list[list[int]] = [[] for _ in range(n_classes)]
    for i in np.flatnonzero(keep).tolist():
        members[int(classes[i])].append(i)
    out: list[NodeLabels] = []
    for c in range(n_classes):
        row = w.getrow(c)
        if row.nnz == 0:
            out.append(())
            continue
        order = np.argsort(-row.data, kind="stable")[: 8 * num + 8]
        ranked = [(vocab[int(row.indices[j])], float(row.data[j])) for j in order]
        ranked = [(t, s) for t, s in ranked if s > 0]
        top = sorted(members[c], key=lambda i: -weights[i])[:200]
        words = _merge_words(ranked, [texts[i] for i in top], num) if merge else ranked[:num]
        out.append(tuple((t, round(s, 6)) for t, s in words))
    return out


def label_threshold(labels: LabelSpace) -> float:
    """The measured cosine a leaf needs to its nearest vocabulary label for that label to
    describe it (:data:`LABEL_THRESHOLDS` for the label space's encoder, else
    :data:`FALLBACK_THRESHOLD`)."""
    return _threshold(None, LABEL_THRESHOLDS, labels)


def close_leaf_labels(
    centroids: npt.NDArray[np.float32],
    labels: LabelSpace,
    num: int,
    threshold: float | None = None,
) -> list[NodeLabels]:
    """Per leaf (unit rows of ``centroids``), its at most ``num`` nearest vocabulary labels
    below the roots (all labels when the vocabulary has no depth) whose cosine reaches
    ``threshold`` (``None``: :func:`label_threshold`), best first."""
    voc = labels.vocabulary.labels
    cand, vecs = labels.subset([lab for lab in voc if lab.depth > 1] or list(voc))
    t = _threshold(threshold, LABEL_THRESHOLDS, labels)
    return _close_labels(np.asarray(centroids, dtype=np.float32), cand, vecs, t, num)


def _threshold(value: float | None, table: Mapping[str, float], labels: LabelSpace) -> float:
    if value is not None:
        return float(value)
    for prefix, t in table.items():
        if labels.encoder_id.startswith(prefix):
            return t
    return FALLBACK_THRESHOLD


def _close_labels(
    centroids: npt.NDArray[np.float32],
    cand: Sequence[Label],
    vecs: npt.NDArray[np.float32],
    threshold: float,
    num: int,
) -> list[NodeLabels]:
    sims = centroids @ vecs.T
    out: list[NodeLabels] = []
    for row in sims:
        top = np.argsort(-row, kind="stable")[:num]
        out.append(tuple((cand[i].full, float(row[i])) for i in top if row[i] >= threshold))
    return out


def _voted(
    close: NodeLabels,
    members: Sequence[int],
    leaf_close: Sequence[NodeLabels],
    m: npt.NDArray[np.float64],
) -> NodeLabels:
    """The close root labels of a group that at least half its leaf mass also carries (its
    leaves' best close labels lie under that root): a root near the group's mean but not
    near its leaves does not name it."""
    total = float(sum(m[i] for i in members)) or 1.0
    votes: dict[str, float] = {}
    for i in members:
        if leaf_close[i]:
            root = leaf_close[i][0][0].split(" > ")[0]
            votes[root] = votes.get(root, 0.0) + float(m[i]) / total
    return tuple((name, s) for name, s in close if votes.get(name, 0.0) >= 0.5)


def _representatives(
    classes: npt.NDArray[np.int64],
    score: npt.NDArray[np.float64],
    n_classes: int,
    items: CatalogueTexts,
    num: int,
) -> list[tuple[RepresentativeItem, ...]]:
    order = np.lexsort((-score, classes))
    out: list[list[RepresentativeItem]] = [[] for _ in range(n_classes)]
    for i in order.tolist():
        c = int(classes[i])
        if c >= 0 and len(out[c]) < num:
            out[c].append(
                RepresentativeItem(items.ids[i], items.texts[i], round(float(score[i]), 6))
            )
    return [tuple(r) for r in out]


def name_nodes(
    leaf_centroids: npt.ArrayLike,
    leaf_masses: npt.ArrayLike,
    groups: Sequence[Sequence[int]],
    items: CatalogueTexts | None,
    popularity: Mapping[str, float] | npt.ArrayLike | None = None,
    labels: LabelSpace | None = None,
    config: NamingConfig | None = None,
) -> NodeNames:
    """Names the leaves and groups of a two-level tree.

    Args:
        leaf_centroids: unit rows, shape ``(n_leaves, dim)``, in the projected space.
        leaf_masses: the leaves' (DP) masses, shape ``(n_leaves,)``, >= 0 (weights of the
            group centroids).
        groups: each group's leaf indices (a leaf in at most one group).
        items: the public catalogue (``None``: no data words, only close labels).
        popularity: the items' (DP) counts, see :func:`item_weights`.
        labels: the embedded vocabulary (``None``: data words only).
        config: :class:`NamingConfig` (``None``: defaults).

    Returns:
        :class:`NodeNames`, leaves in input order, groups in ``groups`` order.

    Raises:
        ConfigError: shapes or values out of range (the message names the argument).
    """
    cfg = config if config is not None else NamingConfig()
    if not isinstance(cfg, NamingConfig):
        raise ConfigError(f"`config` must be a NamingConfig. Found {type(cfg).__name__}.")
    c = np.asarray(leaf_centroids, dtype=np.float32)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1 or not np.isfinite(c).all():
        raise ConfigError(
            f"`leaf_centroids` must be finite with shape (n_leaves >= 1, dim). Found shape {c.shape}."
        )
    if (np.linalg.norm(c, axis=1) == 0).any():
        raise ConfigError("`leaf_centroids` must have non-zero rows. Found a zero row.")
    c = normalize_rows(c)
    n, dim = c.shape
    m = np.asarray(leaf_masses, dtype=np.float64)
    if m.shape != (n,) or not np.isfinite(m).all() or (m < 0).any():
        raise ConfigError(
            f"`leaf_masses` must be finite, >= 0, with shape ({n},). Found shape {m.shape}"
            f"{'' if m.shape != (n,) else f', min {float(m.min()) if n else 0.0}'}."
        )
    seen: set[int] = set()
    for g, members in enumerate(groups):
        if len(members) == 0:
            raise ConfigError(f"`groups[{g}]` must hold at least one leaf index. Found none.")
        for i in members:
            if not (isinstance(i, (int, np.integer)) and 0 <= int(i) < n):
                raise ConfigError(f"`groups[{g}]` must hold leaf indices in [0, {n}). Found {i!r}.")
            if int(i) in seen:
                raise ConfigError(f"`groups[{g}]`: leaf {int(i)} is already in another group.")
            seen.add(int(i))
    if items is not None and not isinstance(items, CatalogueTexts):
        raise ConfigError(f"`items` must be CatalogueTexts or None. Found {type(items).__name__}.")
    if items is not None and len(items.ids) and items.vectors.shape[1] != dim:
        raise ConfigError(
            f"`items.vectors` must have {dim} columns (the centroids'). Found {items.vectors.shape[1]}."
        )
    if labels is not None and labels.dim != dim:
        raise ConfigError(f"`labels` must be embedded in {dim} dimensions. Found {labels.dim}.")

    group_c = np.zeros((len(groups), dim), dtype=np.float32)
    for g, members in enumerate(groups):
        idx = np.asarray(members, dtype=np.int64)
        w = m[idx] if m[idx].sum() > 0 else np.ones(len(idx))
        group_c[g] = (w[:, None] * c[idx]).sum(0)
    group_c = normalize_rows(group_c) if len(groups) else group_c

    leaf_close: list[NodeLabels] = [() for _ in range(n)]
    group_close: list[NodeLabels] = [() for _ in groups]
    if labels is not None:
        leaf_close = close_leaf_labels(c, labels, cfg.num_labels, cfg.label_threshold)
        if len(groups):
            roots, rvecs = labels.subset(labels.vocabulary.roots)
            t_root = _threshold(cfg.root_threshold, ROOT_THRESHOLDS, labels)
            group_close = _close_labels(group_c, roots, rvecs, t_root, cfg.num_labels)
            group_close = [
                _voted(close, members, leaf_close, m)
                for close, members in zip(group_close, groups, strict=True)
            ]

    leaf_words: list[NodeLabels] = [() for _ in range(n)]
    group_words: list[NodeLabels] = [() for _ in groups]
    leaf_items: list[tuple[RepresentativeItem, ...]] = [() for _ in range(n)]
    group_items: list[tuple[RepresentativeItem, ...]] = [() for _ in groups]
    if items is not None and len(items.ids):
        weights = item_weights(items.ids, popularity, floor=cfg.popularity_floor)
        leaf_of, cos = assign_items(items.vectors, c)
        group_of_leaf = np.full(n, -1, dtype=np.int64)
        for g, members in enumerate(groups):
            group_of_leaf[np.asarray(members, dtype=np.int64)] = g
        group_of = group_of_leaf[leaf_of]
        seg = _resolve(cfg.cjk_segmenter)
        x, vocab = _vocab_matrix(items.texts, cfg.extra_stopwords, seg)
        merge, more = seg is CjkSegmenter.BIGRAM, cfg.num_words + _MORE_WORDS
        leaf_words = _class_words(x, vocab, leaf_of, weights, n, items.texts, more, merge)
        leaf_items = _representatives(leaf_of, cos * weights, n, items, cfg.num_representatives)
        if len(groups):
            group_words = _class_words(
                x, vocab, group_of, weights, len(groups), items.texts, more, merge
            )
            gcos = np.einsum("ij,ij->i", items.vectors, group_c[np.maximum(group_of, 0)])
            group_items = _representatives(
                group_of, gcos * weights, len(groups), items, cfg.num_representatives
            )

    leaf_labels, group_labels = distinct_labels(
        leaf_close, leaf_words, group_close, group_words, groups, m, cfg.num_words, WORD_SEPARATOR
    )
    k = cfg.num_words  # the words past k only serve to tell apart nodes sharing a name
    return NodeNames(
        leaf_labels=leaf_labels,
        group_labels=group_labels,
        leaf_items=tuple(leaf_items),
        group_items=tuple(group_items),
        leaf_words=tuple(w[:k] for w in leaf_words),
        group_words=tuple(w[:k] for w in group_words),
    )
