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


def test_image_domain_score_is_the_bonferroni_adjusted_p_over_the_models_criteria():
    """pred_image_domain_score_<target> = log(min(1, K · min p)) / log(alpha) over the K criteria of one model."""
    import pandas as pd

    from mechanoscope.learn.domain import domain_columns
    from tests.test_domain import _ref

    t = pd.DataFrame({"image_id": ["a", "a", "b", "b"]})
    ref = _ref(np.exp(np.random.default_rng(0).normal(0, 0.1, 40)))
    judgement = pd.DataFrame({"p_value": [0.2, 0.004], "reason": ["", "pixel statistics unlike the training images"]}, index=["a", "b"])
    cols = domain_columns(ref, np.array([1.0, 1.0, 1.0, 1.0]), t, "label", image_judgement=judgement)
    p_crop = cols["pred_image_domain_p_crop_label"].to_numpy()
    p_img = cols["pred_image_domain_p_image_label"].to_numpy()
    assert p_img.tolist() == [0.2, 0.2, 0.004, 0.004]
    expected = np.log(np.minimum(1.0, 2 * np.minimum(p_crop, p_img))) / np.log(0.05)
    np.testing.assert_allclose(cols["pred_image_domain_score_label"].to_numpy(), expected, rtol=1e-12)
    assert cols["pred_image_domain_score_label"].iloc[2] > 1 and not cols["pred_image_in_domain_label"].iloc[2]
