"""Validation picks the best checkpoint by PQ, then mIoU, and never by an undefined score."""
import math

from efficientps_ros.training.validation import better


def test_the_best_is_chosen_by_pq_then_miou():
    assert better({"pq": 0.3, "miou": 0.1}, None)
    assert better({"pq": 0.3, "miou": 0.1}, {"pq": 0.2, "miou": 0.9})
    assert not better({"pq": 0.2, "miou": 0.5}, {"pq": 0.3, "miou": 0.1})
    assert better({"pq": 0.3, "miou": 0.5}, {"pq": 0.3, "miou": 0.4})
    assert not better({"pq": 0.3, "miou": 0.4}, {"pq": 0.3, "miou": 0.4})


def test_an_undefined_score_never_wins():
    assert not better({"pq": math.nan, "miou": 0.9}, {"pq": 0.0, "miou": 0.1})
    assert better({"pq": 0.0, "miou": 0.1}, {"pq": math.nan, "miou": 0.9})


def test_a_validation_with_no_defined_score_is_no_best_even_as_the_first():
    assert not better({"pq": math.nan, "miou": math.nan}, None)
    assert not better({"pq": None, "miou": None}, None)
    assert better({"pq": math.nan, "miou": 0.0}, None)
