"""Image-level domain p-values against SciPy's Student t (prediction interval for one more log median)."""

import numpy as np
import pytest
from scipy import stats

from mechanoscope.learn.domain import image_median_p_value, image_median_threshold


def test_prediction_p_value_and_threshold_use_the_sample_sd_with_ddof_1():
    ref = np.array([0.8, 1.0, 1.1, 0.9, 1.3, 0.7])
    lm = np.log(ref)
    n, mean, sd = lm.size, lm.mean(), lm.std(ddof=1)
    m = np.array([1.6, 2.5])
    k = (np.log(m) - mean) / (sd * np.sqrt(1 + 1 / n))
    np.testing.assert_allclose(image_median_p_value(ref, m), stats.t.sf(k, n - 1), rtol=1e-10)
    thr = np.exp(mean + stats.t.ppf(0.95, n - 1) * sd * np.sqrt(1 + 1 / n))
    assert image_median_threshold(ref, 0.05) == pytest.approx(thr, rel=1e-10)
