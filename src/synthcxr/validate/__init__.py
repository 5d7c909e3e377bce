"""Validation of a synthetic archive against the real data it imitates.

Each module serves one rule: ``fid_run`` (FID/KID/precision-recall, held-out real baseline, FID over
training), ``tstr`` (train on synthetic, test on real), ``memorization`` (nearest real training image
per sample, flags) and ``diversity`` (prevalence, co-occurrence, sample grids); ``figures`` draws the
report figures and ``shards`` reads rendered shards directly. Import the module you need.
"""
