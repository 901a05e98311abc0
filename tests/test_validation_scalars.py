"""check_real: the one place scalar bounds are checked, and what its messages say."""

import numpy as np
import pytest

from robust_metric_learning._validation import check_real


@pytest.mark.parametrize("value, kwargs, message", [
    (0.0, dict(low=0.0, low_open=True, high=1.0, high_open=True), r"alpha must be a finite number in \(0, 1\), got 0.0"),
    (1.0, dict(low=0.0, low_open=True, high=1.0, high_open=True), r"alpha must be a finite number in \(0, 1\), got 1.0"),
    (1.5, dict(low=0.0, high=1.0), r"alpha must be a finite number in \[0, 1\], got 1.5"),
    (2.0, dict(high=1.0, high_open=True), r"alpha must be a finite number < 1, got 2.0"),
    (float("nan"), dict(), r"alpha must be a finite number, got nan"),
    (-1.0, dict(low=0.0), r"alpha must be a finite number >= 0, got -1.0"),
])
def test_out_of_bounds_values_are_refused_with_the_bound_named(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_real(value, name="alpha", **kwargs)


@pytest.mark.parametrize("value, kwargs", [
    (1.0, dict(low=0.0, high=1.0)),
    (0.0, dict(low=0.0, high=1.0)),
    (np.float32(0.5), dict(low=0.0, low_open=True, high=1.0, high_open=True)),
    (np.array(0.25), dict(high=1.0)),
])
def test_values_on_or_inside_the_bounds_pass(value, kwargs):
    assert check_real(value, name="alpha", **kwargs) == float(value)


def test_non_numbers_are_type_errors():
    for bad in (True, "0.1", [0.1], np.array([0.1, 0.2])):
        with pytest.raises(TypeError, match="alpha must be a finite number"):
            check_real(bad, name="alpha", low=0.0, high=1.0)
