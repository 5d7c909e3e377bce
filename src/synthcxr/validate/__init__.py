"""Validation of a synthetic archive against the real data it imitates.

Each module serves one rule: ``fid_run`` (FID/KID/precision-recall, held-out real baseline, FID over
training), ``tstr`` (train on synthetic, test on real), ``memorization`` (nearest real training image
per sample, flags), ``diversity`` (prevalence, co-occurrence, sample grids) and ``oracle`` (the
phantom's ground-truth classifier judging the release); ``figures`` draws the
report figures and ``shards`` reads rendered shards directly. Import the module you need.
"""
