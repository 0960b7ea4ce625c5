"""Property tests of observation parsing (sbi_core/io.py): any file either parses to exactly
the observations it holds or raises ValueError; nothing crashes, nothing is silently dropped."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbi_core.io import parse_csv_observations, read_observations

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)
matrices = st.integers(1, 4).flatmap(
    lambda d: st.lists(st.lists(finite, min_size=d, max_size=d), min_size=1, max_size=6))


def _csv(rows, header=None):
    lines = ([",".join(header)] if header else []) + [",".join(repr(float(v)) for v in r)
                                                      for r in rows]
    return "\n".join(lines) + "\n"


@SETTINGS
@given(rows=matrices, with_header=st.booleans())
def test_csv_round_trip_keeps_every_row(tmp_path, rows, with_header):
    d = len(rows[0])
    header = [f"x{i}" for i in range(d)] if with_header else None
    path = tmp_path / "x.csv"
    path.write_text(_csv(rows, header))
    xs = read_observations(path, (d,))
    assert xs.shape == (len(rows), d)
    np.testing.assert_array_equal(xs.numpy(), np.asarray(rows, dtype=np.float32))


@SETTINGS
@given(rows=matrices, row=st.integers(0, 5), col=st.integers(0, 3),
       junk=st.sampled_from(["O.2", "abc", "1..2", "--", "x"]))
def test_a_non_numeric_cell_is_an_error_never_a_dropped_row(tmp_path, rows, row, col, junk):
    row, col = row % len(rows), col % len(rows[0])
    text = [[repr(float(v)) for v in r] for r in rows]
    text[row][col] = junk
    if len(rows[0]) == 1 and row == 0:
        return  # a one-column first line of a name is a header by the rule
    path = tmp_path / "x.csv"
    path.write_text("\n".join(",".join(r) for r in text) + "\n")
    with pytest.raises(ValueError, match=f"line {row + 1}"):
        read_observations(path, (len(rows[0]),))


@SETTINGS
@given(text=st.text(max_size=200))
def test_arbitrary_csv_text_parses_or_raises_value_error(text):
    try:
        arr = parse_csv_observations(text, "t.csv")
    except ValueError:
        return
    data_lines = [ln for ln in text.splitlines() if ln.strip().strip(",").strip()]
    assert arr.ndim == 2 and arr.shape[0] in (len(data_lines), len(data_lines) - 1)


@SETTINGS
@given(rows=matrices, wrap=st.sampled_from(["list", "x", "xs"]))
def test_json_round_trip(tmp_path, rows, wrap):
    d = len(rows[0])
    value = rows if wrap == "list" else {"xs": rows} if wrap == "xs" else {"x": rows[0]}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(value))
    xs = read_observations(path, (d,))
    expected = np.asarray(rows if wrap != "x" else rows[:1], dtype=np.float32)
    assert xs.shape == expected.shape
    np.testing.assert_array_equal(xs.numpy(), expected)


@SETTINGS
@given(payload=st.recursive(st.none() | st.booleans() | finite | st.text(max_size=5),
                            lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                st.sampled_from(["x", "xs", "y"]), c, max_size=2),
                            max_leaves=12),
       d=st.integers(1, 3))
def test_arbitrary_json_parses_or_raises_value_error(tmp_path, payload, d):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(payload))
    try:
        xs = read_observations(path, (d,))
    except ValueError:
        return
    assert xs.ndim == 2 and xs.shape[1] == d and xs.shape[0] >= 1


@SETTINGS
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3), d=st.integers(1, 3),
       dtype=st.sampled_from(["float32", "float64", "int16", "bool", "complex64"]))
def test_npy_parses_to_whole_rows_or_raises(tmp_path, shape, d, dtype):
    arr = np.ones(shape, dtype=dtype)
    path = tmp_path / "x.npy"
    np.save(path, arr)
    try:
        xs = read_observations(path, (d,))
    except ValueError:
        return
    assert xs.shape[1] == d and xs.shape[0] * d == arr.size


def test_garbage_bytes_are_value_errors(tmp_path):
    rng = np.random.default_rng(0)
    for suffix in (".csv", ".json", ".npy"):
        for k in range(20):
            path = tmp_path / f"g{k}{suffix}"
            path.write_bytes(rng.integers(0, 256, size=int(rng.integers(0, 64))).astype(np.uint8)
                             .tobytes())
            try:
                read_observations(path, (2,))
            except ValueError:
                pass
