"""The order of real images shown to the GAN: per-epoch permutations, resumable, rare findings oversampled."""

import numpy as np
import pytest
import torch

from synthcxr.pggan import train_pggan
from synthcxr.pggan.config import PGGANConfig, diff_training
from synthcxr.pggan.layers import minibatch_stddev
from synthcxr.pggan.stream import ImageStream, StepBatchSampler, finding_repeats, rank_share, shown_share


def test_image_stream_is_a_permutation_per_epoch_and_position_addressable():
    s = ImageStream(10, seed=3)
    first = s.indices(0, 10)
    assert sorted(first.tolist()) == list(range(10))
    whole = s.indices(0, 25)
    pieces = torch.cat([torch.from_numpy(s.indices(a, b - a)) for a, b in ((0, 7), (7, 13), (13, 25))])
    assert torch.equal(torch.from_numpy(whole), pieces)
    assert sorted(whole[10:20].tolist()) == list(range(10))


def test_stream_with_repeats_shows_each_image_its_count_per_epoch():
    reps = np.array([1, 3, 1, 2])
    s = ImageStream(4, seed=1, repeats=reps)
    assert s.n == 7
    for epoch in range(3):
        shown = s.indices(epoch * 7, 7)
        assert np.bincount(shown, minlength=4).tolist() == reps.tolist()
    whole = s.indices(0, 20)
    assert np.array_equal(whole, np.concatenate([s.indices(0, 9), s.indices(9, 11)]))
    # all-ones repeats give exactly the stream without repeats
    assert np.array_equal(ImageStream(6, 2, np.ones(6)).indices(0, 30), ImageStream(6, 2).indices(0, 30))
    with pytest.raises(ValueError, match="repeats must be 4 counts"):
        ImageStream(4, 1, repeats=np.array([1, 0, 1, 1]))


def test_sampler_splits_global_batch_across_ranks():
    s = ImageStream(12, seed=0)
    batches = [next(iter(StepBatchSampler(s, 4, 6, r, 3))) for r in range(3)]
    assert sorted(sum(batches, [])) == sorted(s.indices(4, 6).tolist())
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(s, 0, 5, 0, 2)


def test_rank_share_rebuilds_the_global_minibatch_stddev_groups():
    # hand-computed: 16 samples, groups of 4 with stride 4 ({0,4,8,12}, {1,5,9,13}, ...), 2 ranks
    assert rank_share(16, 0, 2).tolist() == [0, 1, 4, 5, 8, 9, 12, 13]
    assert rank_share(16, 1, 2).tolist() == [2, 3, 6, 7, 10, 11, 14, 15]
    assert rank_share(16, 0, 1).tolist() == list(range(16))
    x = torch.randn(32, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = minibatch_stddev(x, 4)[:, -1, 0, 0]
    for world in (2, 4, 8):
        shares = [rank_share(32, r, world) for r in range(world)]
        assert sorted(np.concatenate(shares).tolist()) == list(range(32))
        for sh in shares:  # each rank's own statistic equals the global one on its samples
            torch.testing.assert_close(minibatch_stddev(x[sh], 4)[:, -1, 0, 0], whole[sh], rtol=0, atol=1e-6)
    # 8 samples over 4 ranks cannot keep groups of 4 whole: contiguous slices, groups within each rank
    assert [rank_share(8, r, 4).tolist() for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_finding_repeats_hand_computed():
    # 20 images, findings A (10 positives), B (2), C (1); NaN counts as not positive.
    y = np.zeros((20, 3))
    y[:10, 0] = 1
    y[10:12, 1] = 1
    y[11, 2] = 1
    y[15, 2] = np.nan
    # shares: A 0.5, B 0.1, C 0.05. floor 0.2, first pass: B ceil(2) = 2, C ceil(4) = 4; image 11 takes
    # the larger (4), so 24 showings and C is on 4/24 < 0.2; second pass: C ceil(4 * 0.2 / (4/24)) = 5,
    # 25 showings, C on 5/25 = 0.2: done.
    reps = finding_repeats(y, 0.2, 8)
    expect = np.ones(20, dtype=int)
    expect[10] = 2
    expect[11] = 5  # largest factor among its findings (B 2, C 5)
    assert reps.tolist() == expect.tolist()
    share = shown_share(y, reps)  # sum(repeats * y) / sum(repeats)
    assert share == pytest.approx([10 / 25, 7 / 25, 5 / 25])
    # the cap binds: C would need 5; it stays below the floor (3 of 23 showings)
    capped = finding_repeats(y, 0.2, 3)
    assert capped[11] == 3 and shown_share(y, capped)[2] == pytest.approx(3 / 23)
    assert finding_repeats(y, 0.0, 8).tolist() == [1] * 20
    assert finding_repeats(y, 0.2, 1).tolist() == [1] * 20
    for bad, match in (((y, 1.0, 8), "finding_floor"), ((y, 0.1, 0), "finding_max_repeat")):
        with pytest.raises(ValueError, match=match):
            finding_repeats(*bad)


def test_floor_zero_keeps_the_old_fingerprint_and_a_floor_changes_it():
    base = PGGANConfig.from_section({"run": "x", "resolution": 64})
    assert "finding_floor" not in base.training_dict()
    assert PGGANConfig.from_section({"run": "x", "resolution": 64, "finding_floor": 0.0, "finding_max_repeat": 4}).fingerprint() == base.fingerprint()
    on = PGGANConfig.from_section({"run": "x", "resolution": 64, "finding_floor": 0.1})
    assert on.fingerprint() != base.fingerprint()
    assert on.training_dict()["finding_rule"] == "shown-share"  # the repeat rule is part of what is trained
    # a checkpoint from before the rule was recorded is set aside with a reason a user can read
    older = {k: v for k, v in on.training_dict().items() if k != "finding_rule"}
    assert diff_training(older, on.training_dict()) == [
        "finding_floor rule: one pass, ceil(floor / share) (older checkpoint) -> each finding on >= finding_floor of shown images (fixed point)"
    ]
    assert diff_training(base.training_dict(), on.training_dict()) == [
        "pggan.finding_floor: None -> 0.1",
        "pggan.finding_max_repeat: None -> 8",
        "finding_floor rule: off -> each finding on >= finding_floor of shown images (fixed point)",
    ]


def test_finding_repeats_reach_the_floor_with_co_occurring_findings():
    # 200 images: A on 40, B on 6 (5 of them also A), C on 2 (alone). One pass would leave B and C
    # below the floor because repeated A images lengthen the epoch; the fixed point must not.
    rng = np.random.default_rng(3)
    y = np.zeros((200, 3))
    y[:40, 0] = 1
    y[35:41, 1] = 1
    y[100:102, 2] = 1
    y = y[rng.permutation(200)]
    for floor in (0.1, 0.15, 0.25):
        reps = finding_repeats(y, floor, 64)
        share = shown_share(y, reps)
        assert (share >= floor - 1e-12).all(), (floor, share)
        # images without a finding are shown once
        assert reps.min() == 1 and reps[y.sum(1) == 0].max() == 1


def test_training_with_a_floor_shows_rare_findings_more_often(tiny_prepared, tmp_path, capfd):
    cfg = dict(run="t", resolution=8, latent_dim=16, fmap_base=64, fmap_max=32, fade_kimg=0.1, stable_kimg=0.1,
               minibatch={"4": 16, "8": 16}, checkpoint_kimg=1.0, snapshot_kimg=1.0, log_kimg=0.2, ema_kimg=0.1,
               seed=5, device="cpu", finding_floor=0.3, finding_max_repeat=4)
    path = train_pggan(PGGANConfig.from_section(cfg), tiny_prepared, tmp_path)
    assert path.exists()
    # the tiny set has every finding on 21-29% of images: all are below 0.3, so each is shown more often
    line = next(x for x in capfd.readouterr().err.splitlines() if "finding_floor 0.3" in x)
    pairs = [p.split()[-1].split("->") for p in line.split("finding share shown: ")[1].split(", ")]
    assert len(pairs) == 7 and all(float(a) > float(b) for b, a in pairs)
    assert "epoch of 168 showings" not in line
