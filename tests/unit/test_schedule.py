"""The learning-rate schedule of the shared Brain."""

from mtl_ser.brain import WarmupScheduler


def test_learning_rate_schedules():
    decaying = WarmupScheduler(1.0, 2, 10)
    constant = WarmupScheduler(1.0, 2, 10, decay=False)
    assert [decaying.calculate_lr(s) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert [constant.calculate_lr(s) for s in (0, 1, 2, 6, 10, 50)] == [0.0, 0.5, 1, 1, 1, 1]
    assert WarmupScheduler(2.0, 0, 10, decay=False).calculate_lr(0) == 2.0
