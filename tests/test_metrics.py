"""The pure metrics against closed forms on Gaussians, brute force and torch-fidelity's own formulas."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

import emojidiff
from emojidiff.evaluation.metrics import (
    fid_from_stats,
    fid_kid_floors,
    kid_subset_size,
    memorisation_rates,
    polynomial_mmd2,
)


def test_fid_stats_diagonal_closed_form():
    # commuting (diagonal) covariances: FID = |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert fid_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-10)


def test_fid_stats_general_against_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert fid_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_features_on_gaussian_samples():
    rng = np.random.default_rng(2)
    n, d = 200_000, 4
    s1, s2 = np.array([1.0, 0.5, 2.0, 1.0]), np.array([0.25, 0.5, 1.0, 4.0])
    a = rng.normal(size=(n, d)) * np.sqrt(s1)
    b = rng.normal(size=(n, d)) * np.sqrt(s2) + np.array([1.0, 0, 0, 0])
    want = 1.0 + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert emojidiff.fid_from_features(a, b) == pytest.approx(want, rel=0.02)
    # torch tensors are accepted; the result is the same
    assert emojidiff.fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        emojidiff.fid_from_features(a, b))


def test_fid_matches_torch_fidelity_formula():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 16)).astype(np.float32)
    b = (rng.normal(size=(300, 16)) * 1.3 + 0.2).astype(np.float32)
    ref = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(a)),
                                   fid_features_to_statistics(torch.from_numpy(b)), verbose=False)
    assert emojidiff.fid_from_features(a, b) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)


def _expected_poly3(a, s, b, t, d):
    """E[(x.y/d + 1)^3] for independent x ~ N(a, s^2 I), y ~ N(b, t^2 I) in d dimensions (derived by conditioning)."""
    m = a @ b / d + 1.0
    v = s**2 * (b @ b) / d**2
    return m**3 + 3 * m * v + 3 * t**2 / d**2 * (m * (a @ a + s**2 * d) + 2 * s**2 * (a @ b) / d)


def test_kid_polynomial_mmd_shifted_means_closed_form():
    rng = np.random.default_rng(4)
    d, s = 8, 0.5
    mu_x, mu_y = np.zeros(d), np.full(d, 0.5)
    x = rng.normal(size=(4000, d)) * s + mu_x
    y = rng.normal(size=(4000, d)) * s + mu_y
    want = (_expected_poly3(mu_x, s, mu_x, s, d) + _expected_poly3(mu_y, s, mu_y, s, d)
            - 2 * _expected_poly3(mu_x, s, mu_y, s, d))
    mean, std = emojidiff.kid_from_features(x, y, subsets=50, subset_size=1000)
    assert want > 0.01
    assert std > 0
    assert mean == pytest.approx(want, rel=0.05)


def test_kid_expected_poly3_formula_by_monte_carlo():
    # guards the closed form used above
    rng = np.random.default_rng(5)
    d, a, b = 3, np.array([0.3, -0.2, 0.5]), np.array([1.0, 0.0, -0.4])
    x = rng.normal(size=(1_000_000, d)) * 0.7 + a
    y = rng.normal(size=(1_000_000, d)) * 0.4 + b
    mc = (((x * y).sum(1) / d + 1) ** 3).mean()
    assert mc == pytest.approx(_expected_poly3(a, 0.7, b, 0.4, d), rel=0.01)


def test_kid_unbiased_near_zero_for_identical_distributions():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    mean, std = emojidiff.kid_from_features(x, y, subsets=40, subset_size=500)
    assert abs(mean) < 3 * std / np.sqrt(40) + 1e-4
    # the biased (V-statistic) estimate is clearly positive on the same data: the estimator really is unbiased
    k = lambda u, v: (u @ v.T / 16 + 1) ** 3  # noqa: E731
    biased = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
    assert biased > 20 * abs(mean)


def test_kid_matches_torch_fidelity_mmd_and_clips_subset_size():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(7)
    a = rng.normal(size=(120, 10)).astype(np.float32)
    b = (rng.normal(size=(90, 10)) + 0.3).astype(np.float32)
    ref = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=7, kid_subset_size=90,
                                 kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
    with pytest.warns(UserWarning, match="clipped"):
        mean, std = emojidiff.kid_from_features(a, b, subsets=7, subset_size=1000)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-3)


def test_polynomial_mmd2_against_explicit_sums():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(5)) / 25
    assert polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="dimensions differ"):
        emojidiff.fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        emojidiff.kid_from_features(np.full((5, 3), np.nan), np.zeros((5, 3)))


def _brute(x, y):
    xf = x.reshape(len(x), -1).astype(np.float64) / 127.5 - 1
    yf = y.reshape(len(y), -1).astype(np.float64) / 127.5 - 1
    return ((xf[:, None] - yf[None]) ** 2).mean(2)


def test_nearest_mse_against_brute_force_uint8_and_float():
    rng = np.random.default_rng(9)
    train = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    samples = rng.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)
    samples[:5] = train[[3, 10, 0, 49, 7]]  # exact copies have MSE 0 and the right index
    d = _brute(samples, train)
    mse, idx = emojidiff.nearest_mse(samples, train, chunk=8)
    np.testing.assert_array_equal(idx, d.argmin(1))
    np.testing.assert_allclose(mse, d.min(1), rtol=1e-5, atol=1e-7)
    assert (mse[:5] == 0).all() and list(idx[:5]) == [3, 10, 0, 49, 7]
    # float NCHW in [-1, 1] gives the same answer; k=3 gives sorted neighbours
    as_float = torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 127.5 - 1
    mse3, idx3 = emojidiff.nearest_mse(as_float, train, k=3)
    np.testing.assert_array_equal(idx3, np.argsort(d, 1)[:, :3])
    np.testing.assert_allclose(mse3, np.sort(d, 1)[:, :3], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="differ in size"):
        emojidiff.nearest_mse(samples, train[:, :4])


def test_memorisation_rates():
    m2 = np.array([[0.001, 0.1], [0.02, 0.1], [0.05, 0.06], [0.0, 0.2]])
    r = memorisation_rates(m2, copy_ratio=1 / 3, copy_mse=0.005)
    # L2 ratios: sqrt(0.01)=0.1, sqrt(0.2)=0.447, 0.913, 0 -> two below 1/3
    assert r["copy_rate_ratio"] == 0.5
    assert r["copy_rate_mse"] == 0.5
    assert r["mean_mse"] == pytest.approx(0.071 / 4)


def test_kid_records_and_warns_about_the_subset_size_it_used():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(120, 4)), rng.normal(size=(90, 4))
    with pytest.warns(UserWarning, match="1000 clipped to the smaller set's size 90"):
        mean, std, used = emojidiff.kid_from_features(a, b, subsets=3, subset_size=1000, return_subset_size=True)
    assert used == 90
    # the clipped call is the same computation as asking for 90 directly
    assert (mean, std) == emojidiff.kid_from_features(a, b, subsets=3, subset_size=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing is clipped
        assert emojidiff.kid_from_features(a, b, subsets=3, subset_size=50, return_subset_size=True)[2] == 50
    assert kid_subset_size(500, 3417, 1000) == 500
    with pytest.raises(ValueError, match="at least 2"):
        kid_subset_size(10, 10, 1)


def test_floors_on_gaussians_with_known_answers():
    # train floor: n rows of the reference itself; FID's bias for N(0, I_d) at n is about d/n + d(d+1)/(4(n-1))
    # (|mean error|^2 plus Tr(E^2)/4 for the covariance error E), and KID, unbiased, is about 0
    d, n = 8, 400
    rng = np.random.default_rng(11)
    train = rng.normal(size=(50_000, d))
    shift = np.zeros(d)
    shift[0] = 1.0
    holdout = rng.normal(size=(1500, d)) + shift
    floors = [fid_kid_floors(train, holdout, n, kid_subsets=10, kid_subset_size=1000, seed=s) for s in range(20)]
    fid_train = np.mean([f["fid_floor_train"] for f in floors])
    assert fid_train == pytest.approx(d / n + d * (d + 1) / (4 * (n - 1)), rel=0.15)
    kid_train = np.array([f["kid_floor_train"] for f in floors])
    assert abs(kid_train.mean()) < 4 * kid_train.std() / np.sqrt(len(kid_train))
    # held-out floor: a shifted Gaussian; FID ~ |shift|^2 + the bias, KID the closed form of the shifted means
    f = floors[0]
    assert f["floor_train_n"] == n and f["floor_holdout_n"] == n  # at most n held-out rows: the same sample count
    assert f["floor_train_kid_subset_size"] == n  # 1000 asked, n used, and said so
    fid_hold = np.mean([g["fid_floor_holdout"] for g in floors])
    assert fid_hold == pytest.approx(1.0 + d / n + d * (d + 1) / (4 * (n - 1)), rel=0.1)
    zero = np.zeros(d)
    want = _expected_poly3(zero, 1, zero, 1, d) + _expected_poly3(shift, 1, shift, 1, d) \
        - 2 * _expected_poly3(zero, 1, shift, 1, d)
    assert np.mean([g["kid_floor_holdout"] for g in floors]) == pytest.approx(want, rel=0.15)
    # fewer held-out rows than n: the held-out floor is at their count, recorded
    small = fid_kid_floors(train, holdout[:300], n, kid_subsets=2)
    assert small["floor_holdout_n"] == 300 and small["floor_holdout_kid_subset_size"] == 300
    # no held-out set: only the train floor
    assert "fid_floor_holdout" not in fid_kid_floors(train, None, n, kid_subsets=2)


def test_paired_mse_pairs_image_i_with_image_i():
    rng = np.random.default_rng(12)
    a = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[2, 0, 0, 0] = 255 - b[2, 0, 0, 0]  # one value changed in image 2 only
    d = emojidiff.evaluation.metrics.paired_mse(a, b)
    want = ((255 - 2 * a[2, 0, 0, 0].astype(np.float64)) / 127.5) ** 2 / a[0].size
    np.testing.assert_allclose(d, [0, 0, want, 0, 0], rtol=1e-6, atol=0)  # float32 [-1, 1] values
    got = emojidiff.evaluation.metrics.paired_mse(a, b[::-1])
    np.testing.assert_allclose(got, np.diag(_brute(a, b[::-1])), rtol=1e-6)
    with pytest.raises(ValueError, match="differ in count or size"):
        emojidiff.evaluation.metrics.paired_mse(a, b[:4])


def test_fid_of_float32_stats_is_computed_in_float64():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 64)), rng.normal(0.01, 1.0, size=(400, 64))
    stats = [s.astype(np.float32) for s in (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))]
    exact = fid_from_stats(*[s.astype(np.float64) for s in stats])
    assert fid_from_stats(*stats) == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_fid_of_rank_deficient_covariances_is_finite_and_zero_for_the_same_set():
    # fewer samples than dimensions: eigenvalues that should be 0 come out slightly negative
    x = np.random.default_rng(6).normal(size=(20, 64))
    assert emojidiff.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-4)  # trace about 60: rounding only
    y = np.random.default_rng(7).normal(size=(20, 64))
    assert np.isfinite(emojidiff.fid_from_features(x, y))


def test_training_floor_above_the_training_set_size_is_not_the_set_against_itself():
    train = np.random.default_rng(8).normal(size=(300, 16))
    floors = fid_kid_floors(train, None, n=1000)
    assert floors["floor_train_n"] == 1000
    assert floors["fid_floor_train"] > 1e-3  # drawn with replacement: duplicates shrink the spread, never exactly 0
