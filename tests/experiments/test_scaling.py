"""Power-law fits recover known parameters and their intervals cover them."""

import numpy as np
import pytest

from hybrid_sae_ext.experiments.scaling import fit_joint_power_law, fit_power_law, predict


def test_fit_power_law_recovers_parameters() -> None:
    rng = np.random.default_rng(0)
    n = np.repeat([512, 1024, 2048, 4096, 8192, 16384], 3).astype(float)
    loss = 3.0 * n**-0.4 + 0.05
    noisy = loss * np.exp(rng.normal(0, 0.01, n.size))
    fit = fit_power_law(n, noisy, n_boot=200)
    assert fit.params["alpha"] == pytest.approx(0.4, abs=0.05)
    assert fit.params["c"] == pytest.approx(0.05, abs=0.01)
    assert fit.ci_low["alpha"] <= 0.4 <= fit.ci_high["alpha"]
    assert fit.r_squared > 0.99
    np.testing.assert_allclose(predict(fit, n), noisy, rtol=0.05)


def test_joint_fit_recovers_both_exponents() -> None:
    n, k = np.meshgrid([256.0, 512, 1024, 2048], [8.0, 16, 32])
    n, k = n.ravel(), k.ravel()
    loss = 2.0 * n**-0.3 * k**-0.5 + 0.02
    fit = fit_joint_power_law(n, k, loss, n_boot=100)
    assert fit.params["alpha"] == pytest.approx(0.3, abs=1e-3)
    assert fit.params["beta"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="needs k"):
        predict(fit, n)


@pytest.mark.parametrize(
    "n, loss, message",
    [
        ([1, 2, 3], [1.0, 0.5, 0.3], "more than 3 points"),
        ([1, 2, 3, 4], [1.0, 0.5, -0.3, 0.2], "strictly positive"),
        ([1, 2, 3, 4], [1.0, 0.5], "equal lengths"),
    ],
)
def test_bad_input_is_named(n, loss, message) -> None:
    with pytest.raises(ValueError, match=message):
        fit_power_law(n, loss)
