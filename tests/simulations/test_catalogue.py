"""Users simulated over a real catalogue: the KuaiRec file (read in place from
../shared/data), generic catalogue files with bad records, the generator's catalogue mode and
``fedinterest data synth --catalogue``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from common.event_table import EVENT_TYPES
from common.events import EventType
from simulations.cli import main
from simulations.datasets.catalogue import KUAIREC_OTHER, default_kuairec_file, load_catalogue
from simulations.datasets.synthetic import SyntheticConfig, generate_table


def _kuairec() -> Path:
    path = default_kuairec_file()
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the KuaiRec catalogue is not at {path} (CI must have ../shared/data)")
        pytest.skip(
            f"the KuaiRec catalogue is not at {path}: no ../shared/data beside this checkout"
        )
    return path


def test_kuairec_is_read_with_every_drop_counted() -> None:
    """9,700 of the 10,732 videos have a text and a known first level; what is left out is
    counted by reason; leaves are 'first > second' (其他 where the second is unknown)."""
    cat = load_catalogue(_kuairec())
    assert cat.name == "kuairec" and len(cat.items) == 9700
    assert cat.dropped == {
        "no caption, cover text or topic tag": 989,
        "first level UNKNOWN": 35,
        "broken row (a caption's line break)": 8,
    }
    assert len(cat.leaves) == 175 and len({leaf.split(" > ")[0] for leaf in cat.leaves}) == 38
    assert all(len(leaf.split(" > ")) == 2 for leaf in cat.leaves)
    assert any(leaf.endswith(f" > {KUAIREC_OTHER}") for leaf in cat.leaves)
    assert len({it.item_id for it in cat.items}) == len(cat.items)
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in it.text) for it in cat.items) > 9000


def test_generic_catalogue_files_and_their_errors(tmp_path: Path) -> None:
    """JSONL and CSV catalogues load; records without a text, a category or with a repeated
    id are dropped and counted; a missing field or a non-object line names the record."""
    good = tmp_path / "cat.jsonl"
    rows = [
        {"item_id": "a", "text": "sourdough bread", "category": "Food > Baking"},
        {"item_id": "b", "text": "", "category": "Food > Baking"},
        {"item_id": "c", "text": "trail shoes", "category": ""},
        {"item_id": "a", "text": "again", "category": "Food > Baking"},
        {"item_id": "d", "text": "espresso", "category": "Food>Coffee"},
    ]
    good.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cat = load_catalogue(good)
    assert [it.item_id for it in cat.items] == ["a", "d"]
    assert cat.items[1].leaf == "Food > Coffee"
    assert cat.dropped == {"no text": 1, "no category": 1, "duplicate item_id": 1}
    csv = tmp_path / "cat.csv"
    csv.write_text("item_id,text,category\nx,tea,Food > Tea\n", encoding="utf-8")
    assert load_catalogue(csv).items[0].leaf == "Food > Tea"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,title\n1,tea\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"record 1: needs the fields .*Missing \['item_id'"):
        load_catalogue(bad)
    arr = tmp_path / "arr.jsonl"
    arr.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1: must be an object"):
        load_catalogue(arr)
    with pytest.raises(ConfigError, match="no such file"):
        load_catalogue(tmp_path / "missing.csv")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps(rows[1]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no item"):
        load_catalogue(empty)


def test_generator_over_a_catalogue() -> None:
    """Deterministic in the seed; every event's category is its item's catalogue leaf; no
    searches or reviews (a catalogue has no private texts); leaves are drawn in proportion to
    their share of the catalogue."""
    cat = load_catalogue(_kuairec())
    cfg = SyntheticConfig(users=400, seed=3)
    a = generate_table(cfg, catalogue=cat)
    b = generate_table(cfg, catalogue=cat)
    t = a.table
    np.testing.assert_array_equal(t.item, b.table.item)
    np.testing.assert_array_equal(t.timestamp, b.table.timestamp)
    leaf_of = {it.item_id: it.leaf for it in cat.items}
    text_of = {it.item_id: it.text for it in cat.items}
    assert (t.item >= 0).all()
    for row in range(0, len(t), 97):
        item = t.items[int(t.item[row])]
        assert t.categories[int(t.category[row])] == leaf_of[item]
        assert t.texts[int(t.text[row])] == text_of[item]
    types = set(t.event_type.tolist())
    assert EVENT_TYPES.index(EventType.SEARCH) not in types
    assert EVENT_TYPES.index(EventType.REVIEW) not in types
    # the three largest leaves are among the most visited (popularity = catalogue share)
    visits = Counter(t.categories[int(c)] for c in t.category)
    sizes = Counter(leaf_of.values())
    top = [leaf for leaf, _ in visits.most_common(15)]
    assert sum(leaf in top for leaf, _ in sizes.most_common(3)) >= 2


def test_data_synth_over_a_catalogue_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fedinterest data synth --catalogue FILE`` writes events over that catalogue and says
    what it dropped; a catalogue without items is a one-line error."""
    cat = tmp_path / "cat.tsv"
    lines = ["item_id\ttext\tcategory"]
    for i in range(30):
        root = ("Food", "Travel", "Music")[i % 3]
        lines.append(f"i{i}\t{root} item {i}\t{root} > {root} {i % 2}")
    lines.append("x\t\tFood > Food 0")
    cat.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "ev.jsonl"
    code = main(
        ["data", "synth", "--catalogue", str(cat), "--users", "20", "--out", str(out), "--json"]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["catalogue"] == {"name": "cat.tsv", "items": 30, "dropped": {"no text": 1}}
    events = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert events and {e["category"].split(" > ")[0] for e in events} <= {"Food", "Travel", "Music"}
    empty = tmp_path / "none.tsv"
    empty.write_text("item_id\ttext\tcategory\n", encoding="utf-8")
    code = main(["data", "synth", "--catalogue", str(empty), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "holds no item" in err and "Traceback" not in err
