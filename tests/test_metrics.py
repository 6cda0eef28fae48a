"""Metrics against their textbook definitions, on hand-made accuracy matrices with known answers."""
import numpy as np
import pytest

from shared_subspace import metrics

NAN = np.nan
# 3 tasks. Row i = after training task i. Above-diagonal entries: score before training (FWT).
R = np.array([[0.9, 0.3, 0.2],
              [0.6, 0.8, 0.4],
              [0.5, 0.7, 1.0]])
BASE = np.array([0.1, 0.2, 0.1])


def test_acc_is_mean_of_last_row():
    assert metrics.acc(R) == pytest.approx((0.5 + 0.7 + 1.0) / 3)


def test_bwt_by_hand():
    # (R[2,0] - R[0,0] + R[2,1] - R[1,1]) / 2 = (-0.4 - 0.1) / 2
    assert metrics.bwt(R) == pytest.approx(-0.25)


def test_fwt_by_hand():
    # (R[0,1] - base[1] + R[1,2] - base[2]) / 2 = (0.1 + 0.3) / 2
    assert metrics.fwt(R, BASE) == pytest.approx(0.2)


def test_forgetting_avalanche_vs_mammoth_differ_when_score_peaks_later():
    # task 0: 0.6 right after training, rises to 0.9 after task 1, ends at 0.5
    R2 = np.array([[0.6, NAN, NAN], [0.9, 0.8, NAN], [0.5, 0.8, 0.7]])
    np.testing.assert_allclose(metrics.forgetting_avalanche(R2), [0.1, 0.0])
    np.testing.assert_allclose(metrics.forgetting_mammoth(R2), [0.4, 0.0])
    assert metrics.bwt(R2) == pytest.approx(-metrics.forgetting_avalanche(R2).mean())


def test_mammoth_never_negative_avalanche_can_be():
    # task 0 improves after later tasks: Avalanche reports negative forgetting, Mammoth clips at 0
    R5 = np.array([[0.6, NAN, NAN], [0.5, 0.9, NAN], [0.8, 0.7, 0.9]])
    np.testing.assert_allclose(metrics.forgetting_avalanche(R5), [-0.2, 0.2])
    np.testing.assert_allclose(metrics.forgetting_mammoth(R5), [0.0, 0.2])


def test_no_forgetting_matrix():
    R3 = np.tril(np.full((4, 4), 0.8))
    assert metrics.bwt(R3) == 0.0 and metrics.acc(R3) == pytest.approx(0.8)
    assert np.all(metrics.forgetting_mammoth(R3) == 0)


def test_nan_above_diagonal_ok_but_fwt_needs_it():
    R4 = np.array([[1.0, NAN], [0.5, 1.0]])
    assert metrics.acc(R4) == 0.75 and metrics.bwt(R4) == -0.5
    with pytest.raises(ValueError, match="forward_transfer"):
        metrics.fwt(R4, [0.1, 0.1])
    assert np.isnan(metrics.summary(R4, [0.1, 0.1])["FWT"])


def test_single_task():
    assert metrics.bwt([[0.7]]) == 0.0 and metrics.acc([[0.7]]) == pytest.approx(0.7)
    assert metrics.summary([[0.7]])["forgetting_mammoth"] == 0.0


@pytest.mark.parametrize("bad, msg", [(np.zeros((2, 3)), "square"), (np.zeros((0, 0)), "square"),
                                      (np.array([[NAN, NAN], [0.5, 0.5]]), "NaN")])
def test_bad_matrices(bad, msg):
    with pytest.raises(ValueError, match=msg):
        metrics.acc(bad)


def test_fwt_base_shape():
    with pytest.raises(ValueError, match="one score per task"):
        metrics.fwt(R, [0.1, 0.2])
