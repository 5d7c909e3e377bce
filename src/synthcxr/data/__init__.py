"""Datasets: the built-in phantom, real-dataset adapters, and the prepared HDF5/Parquet store."""
