import numpy as np
import pytest

from loomray.coupling.journal import Journal, JournalError, Record, check_header, read_journal

HEADER = {
    "run": "r1",
    "kind": "loom",
    "rows": 100_000,
    "caches": 4,
    "seed": 0,
    "cost": "l2",
    "fingerprint": "f" * 64,
    "lineage": "abc",
}


def record(step, n=128, world=2, seed=0):
    rng = np.random.default_rng(seed)
    return Record(
        step,
        rng.choice(100_000, size=n, replace=False),
        rng.permutation(n),
        tuple([n // world] * world),
    )


def test_records_round_trip_and_cost_1052_bytes_at_the_cifar_shape(tmp_path):
    path = tmp_path / "journal.bin"
    journal = Journal(path, HEADER, [record(0)])
    sizes = [journal.append(record(s, seed=s)) for s in (1, 2)]
    journal.close()
    assert sizes == [1052, 1052]
    header, records, valid = read_journal(path)
    assert header == HEADER and valid == path.stat().st_size
    for got, step in zip(records, (0, 1, 2), strict=True):
        want = record(step, seed=step)
        assert got.step == step and got.counts == want.counts
        assert np.array_equal(got.rows, want.rows) and np.array_equal(got.perm, want.perm)
        assert got.rows[got.span(1)].tolist() == want.rows[64:].tolist()


def test_a_torn_or_corrupt_tail_ends_the_records_and_is_cut_on_reopen(tmp_path):
    path = tmp_path / "journal.bin"
    journal = Journal(path, HEADER, [record(0), record(1, seed=1)])
    journal.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    _, records, valid = read_journal(path)
    assert [r.step for r in records] == [0] and valid == len(whole) - 1052
    flipped = bytearray(whole)
    flipped[-100] ^= 1
    path.write_bytes(bytes(flipped))
    assert [r.step for r in read_journal(path)[1]] == [0]
    reopened = Journal.reopen(path, valid)
    reopened.append(record(1, seed=1))
    reopened.close()
    assert path.read_bytes() == whole


def test_foreign_or_broken_headers_are_refused(tmp_path):
    path = tmp_path / "journal.bin"
    Journal(path, HEADER).close()
    check_header(path, HEADER, {**HEADER, "lineage": "other"})  # lineage is not identity
    with pytest.raises(JournalError, match=r"belongs to another run \(caches 4, this run has 8\)"):
        check_header(path, HEADER, {**HEADER, "caches": 8})
    raw = path.read_bytes()
    path.write_bytes(raw[:20])
    with pytest.raises(JournalError, match="truncated header"):
        read_journal(path)
    path.write_bytes(b"not a journal at all")
    with pytest.raises(JournalError, match="is not a loomray journal"):
        read_journal(path)
    broken = bytearray(raw)
    broken[20] ^= 1
    path.write_bytes(bytes(broken))
    with pytest.raises(JournalError, match="corrupt header"):
        read_journal(path)
