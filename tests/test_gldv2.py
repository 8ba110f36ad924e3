"""GLDv2 in both protocols on a tiny copy of the release (test_datasets._gldv2): colliding train/index landmark ids,
a query showing two landmarks, an Ignored test image and one showing no landmark. Rankings built from the release's
own ground truth must score Recall@1 = 1.0 through vprlib.metrics."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_datasets import GLD_FRANCE, GLD_INDEX, GLD_RETRIEVAL, GLD_TRAIN, GLD_TRAIN_COUNTS, _gid, _gldv2

from vprlib.data.gldv2 import country_landmarks, gldv2_paper_manifest, gldv2_retrieval_manifest
from vprlib.data.manifest import ManifestError, read_manifest, write_manifest
from vprlib.metrics import manifest_positives, recall_at_n


def _split(table: pa.Table, name: str) -> pa.Table:
    return table.filter(pc.equal(table["split"], name))


def _ranking(queries: pa.Table, database: pa.Table, right) -> np.ndarray:
    """Every database row for each query, those `right(query id, database id)` accepts first."""
    db_ids = database["image_id"].to_pylist()
    rows = []
    for q in queries["image_id"].to_pylist():
        first = [i for i, d in enumerate(db_ids) if right(q, d)]
        rows.append(first + [i for i in range(len(db_ids)) if i not in first])
    return np.array(rows)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return _gldv2(tmp_path_factory.mktemp("gldv2"))


def test_retrieval_perfect_ranking_scores_one(release):
    table = gldv2_retrieval_manifest(str(release))
    queries, database = _split(table, "query"), _split(table, "database")
    assert sorted(queries["image_id"].to_pylist()) == sorted(GLD_RETRIEVAL)  # Ignored, no-landmark: not queries
    ranking = _ranking(queries, database, lambda q, d: d in GLD_RETRIEVAL[q])
    assert recall_at_n(ranking, manifest_positives(queries, database), ns=(1,)) == {1: 1.0}
    assert recall_at_n(ranking[:, ::-1], manifest_positives(queries, database), ns=(1,))[1] < 1.0


def test_paper_perfect_ranking_scores_one(release):
    for seed in range(5):
        table = gldv2_paper_manifest(str(release), "FR.json", fraction=1.0, seed=seed)
        queries, database = _split(table, "query"), _split(table, "database")
        ranking = _ranking(queries, database, lambda q, d: GLD_TRAIN[q] == GLD_TRAIN[d])  # train.csv's landmarks
        assert recall_at_n(ranking, manifest_positives(queries, database), ns=(1,)) == {1: 1.0}
        assert recall_at_n(ranking, manifest_positives(queries, database, mode="landmark"), ns=(1,)) == {1: 1.0}
        assert recall_at_n(ranking[:, ::-1], manifest_positives(queries, database), ns=(1,))[1] < 1.0


def test_equal_landmark_ids_of_other_id_spaces_do_not_match(release):
    # train landmark 1 is the Eiffel Tower, index landmark 1 the Colosseum: an Eiffel query is not right on it
    table = gldv2_retrieval_manifest(str(release))
    queries, database = _split(table, "query"), _split(table, "database")
    eiffel = queries.filter(pc.equal(queries["image_id"], _gid("test-eiffel")))
    db_ids = database["image_id"].to_pylist()
    colosseum = [i for i, d in enumerate(db_ids) if GLD_INDEX[d] == "colosseum"]
    positives = manifest_positives(eiffel, database)
    assert positives[0].tolist() == [i for i, d in enumerate(db_ids) if GLD_INDEX[d] == "eiffel"]
    assert recall_at_n(np.array([colosseum]), positives, ns=(1, 3)) == {1: 0.0, 3: 0.0}
    # the paper protocol never leaves the train id space: France's list brings no index image
    paper = gldv2_paper_manifest(str(release), "FR.json", fraction=1.0)
    assert all("/train/" in u for u in paper["uri"].to_pylist())


def test_multi_landmark_query_is_right_on_either(release):
    table = gldv2_retrieval_manifest(str(release))
    queries, database = _split(table, "query"), _split(table, "database")
    both = queries.filter(pc.equal(queries["image_id"], _gid("test-eiffel-colosseum")))
    db_ids = database["image_id"].to_pylist()
    for name in ("eiffel", "colosseum"):
        first = [i for i, d in enumerate(db_ids) if GLD_INDEX[d] == name][:1]
        assert recall_at_n(np.array([first]), manifest_positives(both, database), ns=(1,)) == {1: 1.0}


def test_paper_split_by_landmark(release):
    seen_single = False
    for seed in range(10):
        table = gldv2_paper_manifest(str(release), "FR.json", fraction=1.0, seed=seed)
        rows = table.to_pylist()
        train = {r["landmark_id"] for r in rows if r["split"] == "train"}
        test = {r["landmark_id"] for r in rows if r["split"] != "train"}
        assert train and test and not train & test and train | test == GLD_FRANCE
        for landmark in test:
            splits = [r["split"] for r in rows if r["landmark_id"] == landmark]
            if GLD_TRAIN_COUNTS[landmark] == 1:  # nothing to find it with: a database row only
                seen_single = True
                assert splits == ["database"]
            else:
                assert "query" in splits and "database" in splits
                assert splits.count("query") == min(max(round(0.5 * len(splits)), 1), len(splits) - 1)
    assert seen_single  # some seed makes the single-image landmark a test landmark


def test_paper_test_landmark_share_and_query_fraction(release):
    def queries_per_landmark(query_fraction):
        table = gldv2_paper_manifest(str(release), "FR.json", fraction=1.0, test_landmarks=0.75,
                                     query_fraction=query_fraction)
        rows = table.to_pylist()
        assert len({r["landmark_id"] for r in rows if r["split"] != "train"}) == 6
        splits = {r["landmark_id"]: [] for r in rows if r["split"] != "train"}
        for r in rows:
            splits.get(r["landmark_id"], []).append(r["split"])
        return {lm: (s.count("query"), len(s)) for lm, s in splits.items() if len(s) > 1}

    assert {q for q, _ in queries_per_landmark(0.05).values()} == {1}  # at least one query
    assert all(q == n - 1 for q, n in queries_per_landmark(0.95).values())  # at least one database image


def test_manifests_keep_positives_through_parquet(release, tmp_path):
    for table in (gldv2_retrieval_manifest(str(release)), gldv2_paper_manifest(str(release), "FR.json")):
        write_manifest(table, str(tmp_path / "m.parquet"))
        back = read_manifest(str(tmp_path / "m.parquet"))
        assert back["positives"].type == pa.list_(pa.string())
        assert back["positives"].to_pylist() == table["positives"].to_pylist()
        got = manifest_positives(_split(back, "query"), _split(back, "database"))
        want = manifest_positives(_split(table, "query"), _split(table, "database"))
        assert [p.tolist() for p in got] == [p.tolist() for p in want]


def test_release_files_flat_or_in_folders(tmp_path):
    flat, nested = _gldv2(tmp_path / "flat", flat=True), _gldv2(tmp_path / "nested")
    for build in (gldv2_retrieval_manifest, lambda root: gldv2_paper_manifest(root, "FR.json")):
        assert build(str(flat))["image_id"].to_pylist() == build(str(nested))["image_id"].to_pylist()
    (nested / "index.csv").write_text((nested / "metadata/index.csv").read_text())
    with pytest.raises(ManifestError, match=r"index.csv is there twice \(index.csv, metadata/index.csv\)"):
        gldv2_retrieval_manifest(str(nested))


def test_country_lists(release, tmp_path):
    assert country_landmarks(str(release / "FR.json")) == GLD_FRANCE
    assert country_landmarks(str(release / "countries.csv"), " FRANCE") == GLD_FRANCE
    cases = [
        ("fr.json", '{"id": 1}', "expected a list of landmarks"),
        ("fr.json", '[{"id": 1}, {"name": "Louvre"}]', "entry 1: no integer landmark id"),
        ("fr.json", "[{", "not JSON"),
        ("fr.json", "[]", "lists no landmark"),
        ("fr.txt", "1\n", "a country list is .json"),
        ("fr.csv", "landmark_id\n1\n", r"missing column; need \['landmark_id', 'country'\]"),
        ("fr.csv", "landmark_id,country\n1,France\n2,Spain\n", r"lists 2 countries \(france, spain\); choose one"),
    ]
    for name, text, message in cases:
        (tmp_path / name).write_text(text)
        with pytest.raises(ManifestError, match=message):
            country_landmarks(str(tmp_path / name))
    with pytest.raises(ManifestError, match="--country is for a CSV list"):
        country_landmarks(str(release / "FR.json"), "France")
    (tmp_path / "elsewhere.json").write_text('[{"id": 99, "name": "Nowhere"}]')
    with pytest.raises(ManifestError, match=r"elsewhere.json: none of its 1 landmark\(s\) has an image in .*train.csv"):
        gldv2_paper_manifest(str(release), str(tmp_path / "elsewhere.json"))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{q},{i},Secret", r"row 5 \(id '{q}'\): Usage 'Secret' is not one of \['Public', 'Private', 'Ignored'\]"),
        ("{q},None,Public", r"row 5 \(id '{q}'\): Usage Public but no index images"),
        ("{q},{i} 0123456789abcdef,Private", r"row 5 \(id '{q}'\): index image 0123456789abcdef is not in .*index.csv"),
    ],
)
def test_retrieval_solution_errors(tmp_path, row, message):
    root = _gldv2(tmp_path)
    solution = root / "ground_truth/retrieval_solution_v2.1.csv"
    q, i = _gid("test-extra"), next(iter(GLD_INDEX))
    solution.write_text(solution.read_text() + row.format(q=q, i=i) + "\n")
    with pytest.raises(ManifestError, match=message.format(q=q)):
        gldv2_retrieval_manifest(str(root), check_files=False)
