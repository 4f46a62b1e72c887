import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loomray.coupling import AssignmentTable


def test_create_is_distinct_and_seeded():
    t = AssignmentTable.create(50, 3, seed=1)
    assert t.seeds.shape == (50, 3) and t.seeds.dtype == np.int64
    assert np.unique(t.seeds).size == 150
    assert np.array_equal(t.seeds, AssignmentTable.create(50, 3, seed=1).seeds)
    assert not np.array_equal(t.seeds, AssignmentTable.create(50, 3, seed=2).seeds)
    with pytest.raises(ValueError):
        AssignmentTable.create(0, 3)
    with pytest.raises(ValueError):
        AssignmentTable.create(5, 0)


def test_round_trip_exact(tmp_path):
    t = AssignmentTable.create(1000, 4, seed=3)
    t.seeds[:10] = t.seeds[:10, ::-1]  # permuted, as after LOOM steps
    t.step = 1234
    path = t.save(tmp_path / "table.parquet")
    back = AssignmentTable.load(path)
    assert np.array_equal(back.seeds, t.seeds)
    assert back.step == 1234 and back.fingerprint == t.fingerprint
    assert back.is_permutation_of_origin()
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temp file


def _write(path, seeds, **meta_overrides):
    """A table file whose metadata is computed honestly, then overridden."""
    t = AssignmentTable(seeds)
    t.save(path)
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    for k, v in meta_overrides.items():
        meta[f"loomray.{k}".encode()] = str(v).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("truncate", "not a readable Parquet"),
        ("garbage", "not a readable Parquet"),
        ("missing", "does not exist"),
        ("shape", "has shape"),
        ("caches", "has shape"),
        ("checksum", "fails its checksum"),
        ("duplicate", "duplicated seeds"),
        ("foreign", "no longer holds"),
        ("no-meta", "lacks loomray metadata"),
    ],
)
def test_corrupt_files_are_refused_by_name(tmp_path, corrupt, message):
    path = tmp_path / "bad.parquet"
    good = AssignmentTable.create(64, 2, seed=0)
    if corrupt == "truncate":
        good.save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif corrupt == "garbage":
        path.write_bytes(b"not parquet at all")
    elif corrupt == "shape":
        _write(path, good.seeds, rows=65)
    elif corrupt == "caches":
        _write(path, good.seeds, caches=3)
    elif corrupt == "checksum":
        _write(path, good.seeds, checksum="0" * 64)
    elif corrupt == "duplicate":
        seeds = good.seeds.copy()
        seeds[1, 0] = seeds[0, 0]
        _write(path, seeds)
    elif corrupt == "foreign":
        seeds = good.seeds.copy()
        seeds[0, 0] += 10**12  # still distinct, but not one of the table's seeds
        _write(path, seeds, fingerprint=good.fingerprint)
    elif corrupt == "no-meta":
        pq.write_table(pa.table({"cache_0": pa.array([1, 2, 3])}), path)
    with pytest.raises(ValueError, match=message) as err:
        AssignmentTable.load(path)
    assert str(path) in str(err.value)
